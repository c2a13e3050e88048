"""The seed's notebook loop, as its README describes it, slow parts included.

- `ImageDataset`: every `__getitem__` decodes the JPEG with PIL, then `Resize((128, 128))` +
  `ToTensor()`, in every epoch;
- `CNN_Classifier` in fp32, `DataLoader(batch_size=32, shuffle=True)`, Adam, ReduceLROnPlateau;
- recommendations: scikit-learn `cosine_similarity` over all embeddings, then `argsort`.
"""

import io
import itertools

import numpy as np
import pandas as pd
import torch
from PIL import Image
from sklearn.metrics.pairwise import cosine_similarity
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

IMG_SIZE = 128
BATCH_SIZE = 32
TRANSFORM = transforms.Compose([transforms.Resize((IMG_SIZE, IMG_SIZE)), transforms.ToTensor()])


class ImageDataset(Dataset):
    def __init__(self, dataframe: pd.DataFrame, transform=TRANSFORM):
        self.dataframe, self.transform = dataframe, transform

    def __len__(self) -> int:
        return len(self.dataframe)

    def __getitem__(self, idx: int):
        image = Image.open(io.BytesIO(self.dataframe.iloc[idx]["image"]["bytes"])).convert("RGB")
        return self.transform(image), self.dataframe.iloc[idx]["label"]


class CNN_Classifier(nn.Module):  # the seed's name
    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d((4, 4)),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(256 * 4 * 4, 512), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(512, num_classes),
        )  # fmt: skip

    def forward(self, x):
        return self.classifier(self.features(x))

    def forward_features(self, x):
        return self.classifier[:3](self.features(x))


def run_epoch(model, loader, criterion, device, optimizer=None, max_batches=None):
    """One pass (training when given an optimizer); returns (mean loss, accuracy)."""
    model.train(optimizer is not None)
    loss_sum, correct, total = 0.0, 0, 0
    with torch.set_grad_enabled(optimizer is not None):
        for images, labels in itertools.islice(loader, max_batches):
            images, labels = images.to(device), labels.to(device)
            outputs = model(images)
            loss = criterion(outputs, labels)
            if optimizer is not None:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += (outputs.argmax(1) == labels).sum().item()
            total += len(labels)
    return loss_sum / total, correct / total


def fit(model, train_loader, val_loader, epochs, lr, device, max_batches=None):
    """The seed's training loop; returns the validation accuracy of each epoch."""
    model.to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, "min", 0.1, 3)
    accuracies = []
    for _ in range(epochs):
        run_epoch(model, train_loader, criterion, device, optimizer, max_batches)
        val_loss, val_acc = run_epoch(model, val_loader, criterion, device)
        scheduler.step(val_loss)
        accuracies.append(val_acc)
    return accuracies


def extract_embeddings(model, frame: pd.DataFrame, device) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        loader = DataLoader(ImageDataset(frame), batch_size=BATCH_SIZE)
        return np.vstack([model.forward_features(x.to(device)).cpu().numpy() for x, _ in loader])


def recommend_one(embeddings: np.ndarray, query: int, top_k: int = 5) -> np.ndarray:
    """Similarities to all, argsort, skip the query itself."""
    similarities = cosine_similarity(embeddings[query : query + 1], embeddings)[0]
    order = np.argsort(similarities)[::-1]
    return order[order != query][:top_k]


def recommend_all(embeddings: np.ndarray, top_k: int = 5, rows_per_sort: int = 1024) -> np.ndarray:
    """Top-k for every item from the whole N x N similarity matrix, as the seed would.

    Only the argsort goes by blocks of rows: its N x N int64 result would be twice the matrix.
    """
    similarities = cosine_similarity(embeddings)  # (N, N)
    np.fill_diagonal(similarities, -np.inf)  # never recommend an item to itself
    return np.concatenate(
        [
            np.argsort(-similarities[start : start + rows_per_sort], axis=1)[:, :top_k]
            for start in range(0, len(similarities), rows_per_sort)
        ]
    )
