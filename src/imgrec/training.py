"""The training loop: Adam, cross-entropy, ReduceLROnPlateau, early stopping on val loss."""

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from imgrec.inference import memory_format, predict_logits, to_tensor
from imgrec.model import CNNClassifier

log = logging.getLogger(__name__)

MAX_ROTATION_DEGREES = 10.0


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one record per epoch
    best_epoch: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False

    @property
    def epochs_run(self) -> int:
        return len(self.history)


class ArrayBatches(torch.utils.data.Dataset):
    """Batches straight from the memory-mapped uint8 array: one slice per batch, no decoding."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, index: np.ndarray):
        self.images, self.labels, self.index = images, labels, index

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.index[positions]
        return torch.from_numpy(self.images[rows]), torch.from_numpy(self.labels[rows])


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips and rotations of up to MAX_ROTATION_DEGREES, per image."""
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(MAX_ROTATION_DEGREES)
    cos, sin = torch.cos(angle), torch.sin(angle)
    sign = torch.where(flip, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * sign, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * sign, cos
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    # Border padding: a rotated corner repeats the edge instead of turning black.
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def train(
    model: CNNClassifier,
    images: np.ndarray,
    labels: np.ndarray,
    train_index: np.ndarray,
    val_index: np.ndarray,
    *,
    batch_size: int,
    epochs: int,
    lr: float,
    patience: int,
    lr_factor: float,
    lr_patience: int,
    augment: bool,
    generator: torch.Generator,
    device: torch.device,
    channels_last: bool = True,
    precision: str = "fp32",
    max_batches: int | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train in place; on return the model holds the weights of the best validation epoch.

    `max_batches` caps batches per epoch (for smoke tests); `on_epoch` gets each epoch's record.
    """
    model.to(device=device, memory_format=memory_format(channels_last))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=lr_factor, patience=lr_patience
    )
    loader = DataLoader(
        ArrayBatches(images, labels, train_index),
        batch_size=batch_size,
        sampler=RandomSampler(train_index, generator=generator),
        collate_fn=lambda batch: batch,  # __getitems__ already returns whole tensors
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    result, best_state, epochs_without_improvement = TrainResult(), None, 0
    val_labels = torch.from_numpy(labels[val_index])

    for epoch in range(1, epochs + 1):
        model.train()
        seen, loss_sum, correct = 0, 0.0, 0
        n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
        progress = tqdm(
            loader, total=n_batches, desc=f"epoch {epoch}/{epochs}", unit="batch", leave=False
        )
        for step, (pixels, targets) in enumerate(progress):
            if step == n_batches:
                break
            x = to_tensor(pixels.numpy(), device)
            if augment:
                x = augment_batch(x, generator)
            x = x.contiguous(memory_format=memory_format(channels_last))
            targets = targets.to(device)
            with autocast:
                logits = model(x)
                loss = F.cross_entropy(logits.float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(targets)
            loss_sum += loss.item() * len(targets)
            correct += (logits.argmax(1) == targets).sum().item()
            progress.set_postfix(loss=f"{loss_sum / seen:.4f}")

        val_logits = predict_logits(
            model,
            images,
            val_index,
            batch_size=max(batch_size, 256),
            device=device,
            channels_last=channels_last,
        )
        val_loss = F.cross_entropy(val_logits, val_labels).item()
        val_acc = (val_logits.argmax(1) == val_labels).float().mean().item()
        record = {
            "epoch": epoch,
            "train_loss": loss_sum / seen,
            "train_acc": correct / seen,
            "val_loss": val_loss,
            "val_acc": val_acc,
            "lr": optimizer.param_groups[0]["lr"],
        }
        result.history.append(record)
        log.info(
            "epoch %d/%d  train loss %.4f acc %.4f  val loss %.4f acc %.4f  lr %.2g",
            epoch,
            epochs,
            record["train_loss"],
            record["train_acc"],
            val_loss,
            val_acc,
            record["lr"],
        )
        if on_epoch is not None:
            on_epoch(record)
        scheduler.step(val_loss)

        if val_loss < result.best_val_loss:
            result.best_val_loss, result.best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.state_dict())
            epochs_without_improvement = 0
        else:
            epochs_without_improvement += 1
            if epochs_without_improvement >= patience:
                result.stopped_early = True
                log.info(
                    "early stopping at epoch %d: val loss has not improved for %d epochs; "
                    "restoring the weights of epoch %d",
                    epoch,
                    patience,
                    result.best_epoch,
                )
                break

    if best_state is not None:
        model.load_state_dict(best_state)
    return result
