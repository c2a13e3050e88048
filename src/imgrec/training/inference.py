"""Batched forward passes over uint8 image arrays: logits and embeddings.

Training, evaluate, embed and the query command all use these, so the
catalog and a query image are embedded by the same code.
"""

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from imgrec.training.model import CNNClassifier


def to_tensor(batch: np.ndarray | torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float32 (B, 3, H, W) in [0, 1], as torchvision's ToTensor; a
    batch already on the device is normalised there."""
    if not isinstance(batch, torch.Tensor):
        batch = torch.from_numpy(np.ascontiguousarray(batch))
    pixels = batch.to(device, non_blocking=True)
    return pixels.permute(0, 3, 1, 2).float().div_(255.0)


def on_device(images: np.ndarray, device: torch.device, share: float = 0.5) -> torch.Tensor | None:
    """`images` (N, H, W, 3) uint8 copied to a GPU once, where they fit in `share` of its free
    memory: then no batch is gathered on the host and copied over (on an H200, batches from
    the host gave 6.2 s an epoch where the compute alone takes 4.7 s). None on the CPU or
    where they do not fit."""
    if device.type != "cuda" or images.nbytes > share * torch.cuda.mem_get_info(device)[0]:
        return None
    resident = torch.empty(images.shape, dtype=torch.uint8, device=device)
    chunk = max(1, (64 << 20) // max(1, images[0].nbytes if len(images) else 1))  # 64 MiB each
    for start in range(0, len(images), chunk):
        # np.array: a writable copy of the memory-mapped slice, as torch.from_numpy wants
        resident[start : start + chunk].copy_(
            torch.from_numpy(np.array(images[start : start + chunk]))
        )
    return resident


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def batches(
    images: np.ndarray | torch.Tensor, index: np.ndarray | None, batch_size: int
) -> Iterator[np.ndarray | torch.Tensor]:
    """uint8 (B, H, W, 3) batches of `images[index]` in order (all images when index is None);
    of a tensor on a GPU (`on_device`), gathered there."""
    index = np.arange(len(images)) if index is None else index
    if isinstance(images, torch.Tensor):
        index = torch.from_numpy(np.asarray(index)).to(images.device, non_blocking=True)
        for start in range(0, len(index), batch_size):
            yield images.index_select(0, index[start : start + batch_size])
        return
    for start in range(0, len(index), batch_size):
        yield images[index[start : start + batch_size]]


@torch.inference_mode()
def _forward(
    model: CNNClassifier,
    images: np.ndarray | torch.Tensor,
    index: np.ndarray | None,
    *,
    output: str,
    batch_size: int,
    device: torch.device,
    channels_last: bool,
    desc: str | None,
) -> torch.Tensor:
    model.eval()
    outputs = []
    total = len(images) if index is None else len(index)
    for batch in tqdm(
        batches(images, index, batch_size),
        desc=desc,
        total=-(-total // batch_size),
        unit="batch",
        disable=True if desc is None else None,  # None: on a terminal only, never in a log
    ):
        x = to_tensor(batch, device).contiguous(memory_format=memory_format(channels_last))
        forward = {
            "logits": model,
            "embedding": model.forward_features,
            "appearance": model.forward_appearance,
            "catalog": model.forward_catalog,
        }[output]
        outputs.append(forward(x).float().cpu())
    if not outputs:
        config = model.config
        width = {
            "logits": config.num_classes,
            "embedding": config.embedding_dim,
            "appearance": config.widths[-1],
            "catalog": config.embedding_dim + config.widths[-1],
        }
        return torch.empty(0, width[output])
    return torch.cat(outputs)


def predict_logits(
    model: CNNClassifier,
    images: np.ndarray | torch.Tensor,
    index: np.ndarray | None = None,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
    desc: str | None = None,
) -> torch.Tensor:
    """(N, num_classes) float32 logits for `images[index]` (a NumPy array, or a tensor from
    `on_device`)."""
    return _forward(
        model,
        images,
        index,
        output="logits",
        batch_size=batch_size,
        device=device,
        channels_last=channels_last,
        desc=desc,
    )


def embed(
    model: CNNClassifier,
    images: np.ndarray,
    index: np.ndarray | None = None,
    *,
    space: str = "embedding",
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
    desc: str | None = None,
) -> np.ndarray:
    """(N, D) float32 L2-normalised vectors of `images[index]`.

    `space="embedding"`: `forward_features`, what recommendations search;
    `space="appearance"`: `forward_appearance`, what novelty is judged on.
    """
    vectors = _forward(
        model,
        images,
        index,
        output=space,
        batch_size=batch_size,
        device=device,
        channels_last=channels_last,
        desc=desc,
    )
    return _unit_rows(vectors)


def catalog_vectors(
    model: CNNClassifier,
    images: np.ndarray,
    *,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings, appearance) of every image, as `embed` gives each, from one pass of the
    conv blocks instead of two: what the catalog stores and a query is compared on."""
    both = _forward(
        model,
        images,
        None,
        output="catalog",
        batch_size=batch_size,
        device=device,
        channels_last=channels_last,
        desc=desc,
    )
    split = model.config.embedding_dim
    return _unit_rows(both[:, :split]), _unit_rows(both[:, split:])


def _unit_rows(vectors: torch.Tensor) -> np.ndarray:
    # contiguous: the same memory layout, so the same kernels and bits, as a tensor of its own.
    return F.normalize(vectors.contiguous(), dim=1).numpy().astype(np.float32)
