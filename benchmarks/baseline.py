"""The seed's notebook-style pipeline, reproduced as its README describes it.

Kept deliberately faithful, slow parts included, so the benchmark measures
what imgrec replaced:
- loading (in `baseline_fetch.py`): `dd.read_parquet(...).head(rows)` into
  one pandas DataFrame of image bytes (the seed's literal `head(rows)` reads
  only Dask's first partition; `npartitions=-1` takes the rows it meant);
- `ImageDataset`: every `__getitem__` decodes the JPEG with PIL, then
  `Resize((128, 128))` + `ToTensor()`, on every epoch;
- `CNN_Classifier` in fp32, `DataLoader(batch_size=32, shuffle=True)`;
- recommendations: scikit-learn `cosine_similarity` over all embeddings,
  then `argsort`.
"""

import io

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.metrics.pairwise import cosine_similarity
from torch import nn
from torch.utils.data import Dataset
from torchvision import transforms

IMG_SIZE = 128
BATCH_SIZE = 32


TRANSFORM = transforms.Compose([transforms.Resize((IMG_SIZE, IMG_SIZE)), transforms.ToTensor()])


class ImageDataset(Dataset):
    def __init__(self, dataframe: pd.DataFrame, transform=TRANSFORM):
        self.dataframe = dataframe
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataframe)

    def __getitem__(self, idx: int):
        img_bytes = self.dataframe.iloc[idx]["image"]["bytes"]
        image = Image.open(io.BytesIO(img_bytes)).convert("RGB")
        label = self.dataframe.iloc[idx]["label"]
        if self.transform:
            image = self.transform(image)
        return image, label


class CNN_Classifier(nn.Module):  # the seed's name
    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, kernel_size=3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, kernel_size=3, padding=1),
            nn.BatchNorm2d(128),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(128, 256, kernel_size=3, padding=1),
            nn.BatchNorm2d(256),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d((4, 4)),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256 * 4 * 4, 512),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(512, num_classes),
        )

    def forward(self, x):
        x = self.features(x)
        x = self.classifier(x)
        return x

    def forward_features(self, x):
        x = self.features(x)
        x = self.classifier[0](x)
        x = self.classifier[1](x)
        x = self.classifier[2](x)
        return x


def train_epoch(model, loader, criterion, optimizer, device, max_batches=None, on_step=None):
    """One epoch of the seed's loop; returns (loss, accuracy). `max_batches` caps it."""
    model.train()
    running_loss, correct, total = 0.0, 0, 0
    for step, (images, labels) in enumerate(loader):
        if max_batches is not None and step == max_batches:
            break
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        outputs = model(images)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        if on_step is not None:
            on_step(len(labels))
        running_loss += loss.item() * images.size(0)
        _, predicted = torch.max(outputs, 1)
        total += labels.size(0)
        correct += (predicted == labels).sum().item()
    return running_loss / total, correct / total


def validate(model, loader, criterion, device):
    model.eval()
    running_loss, correct, total = 0.0, 0, 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            outputs = model(images)
            loss = criterion(outputs, labels)
            running_loss += loss.item() * images.size(0)
            _, predicted = torch.max(outputs, 1)
            total += labels.size(0)
            correct += (predicted == labels).sum().item()
    return running_loss / total, correct / total


def extract_embeddings(model, loader, device) -> np.ndarray:
    model.eval()
    embeddings = []
    with torch.no_grad():
        for images, _ in loader:
            features = model.forward_features(images.to(device))
            embeddings.append(features.cpu().numpy())
    return np.vstack(embeddings)


def recommend_one(embeddings: np.ndarray, query: int, top_k: int = 5) -> np.ndarray:
    """The seed's single-query recommendation: similarities to all, argsort, skip itself."""
    similarities = cosine_similarity(embeddings[query : query + 1], embeddings)[0]
    order = np.argsort(similarities)[::-1]
    return order[order != query][:top_k]


def recommend_all(
    embeddings: np.ndarray, top_k: int = 5, rows_per_sort: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k for every item from the full N x N cosine similarity matrix, as the seed would.

    The argsort runs over blocks of rows only so its N x N int64 index array
    (2x the similarity matrix) does not exhaust memory; the matrix itself is whole.
    """
    similarities = cosine_similarity(embeddings)  # (N, N), float32 for float32 input
    np.fill_diagonal(similarities, -np.inf)  # never recommend an item to itself
    n = len(similarities)
    indices = np.empty((n, top_k), np.int64)
    for start in range(0, n, rows_per_sort):
        block = similarities[start : start + rows_per_sort]
        indices[start : start + len(block)] = np.argsort(-block, axis=1)[:, :top_k]
    scores = np.take_along_axis(similarities, indices, axis=1)
    return scores, indices
