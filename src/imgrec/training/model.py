"""The seed's CNN. No I/O here: checkpoints live in `checkpoint.py`."""

import functools
import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int
    in_channels: int = 3
    widths: tuple[int, ...] = (32, 64, 128, 256)
    pooled_size: int = 4  # adaptive average pool to pooled_size x pooled_size
    embedding_dim: int = 512
    dropout: float = 0.5


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """`nn.AdaptiveAvgPool2d` with a backward that is deterministic on CUDA too.

    aten's CUDA backward adds into the input gradient with atomics and raises under
    `torch.use_deterministic_algorithms` (pytorch#108341), whatever the sizes. The forward
    is aten's on every device and so is the CPU backward (the same bits as before); on
    CUDA the backward gathers each input position's share of the windows that hold it.
    No parameters, no buffers: a checkpoint's keys are the same as with torch's module.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _AdaptiveAvgPool.apply(x, self.output_size)


class _AdaptiveAvgPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, output_size) -> torch.Tensor:
        ctx.save_for_backward(x)
        return F.adaptive_avg_pool2d(x, output_size)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        if grad.device.type == "cpu":  # what autograd calls for nn.AdaptiveAvgPool2d
            return torch.ops.aten._adaptive_avg_pool2d_backward(grad, x), None
        return adaptive_avg_pool2d_backward(grad, x), None


def adaptive_avg_pool2d_backward(grad: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, C, OH, OW) gradient of the pool's output -> (B, C, H, W) gradient of its input `x`,
    without atomics: rows, then columns, each input index summing its windows' shares in a
    fixed order (float32 accumulation, as aten's kernels)."""
    spread = _spread(grad.float(), x.shape[-2], dim=2)  # (B, C, H, OW)
    spread = _spread(spread, x.shape[-1], dim=3)  # (B, C, H, W)
    layout = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else None
    return spread.to(x.dtype).contiguous(memory_format=layout or torch.contiguous_format)


def _spread(grad: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Along `dim`: each of `size` input indices gets the sum of (gradient / window length)
    over the output windows that contain it."""
    windows, lengths = _windows(size, grad.shape[dim], grad.device)
    shape = [1] * grad.dim()
    shape[dim] = -1
    pad = [0] * (2 * grad.dim())
    pad[2 * (grad.dim() - 1 - dim) + 1] = 1  # one zero slice at the end: "no window"
    shares = F.pad(grad / lengths.view(shape), pad)
    total = shares.index_select(dim, windows[0])
    for window in windows[1:]:
        total = total + shares.index_select(dim, window)
    return total


@functools.cache
def _windows(size: int, pooled: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """((K, size) the output windows holding each input index, padded with `pooled`: none;
    (pooled,) each window's length). aten's windows: [floor(o*size/pooled), ceil((o+1)*size/
    pooled)). Cached per device: built once, never copied to the GPU during training."""
    starts = [o * size // pooled for o in range(pooled)]
    ends = [-(-(o + 1) * size // pooled) for o in range(pooled)]
    holding = [[o for o in range(pooled) if starts[o] <= i < ends[o]] for i in range(size)]
    depth = max(len(h) for h in holding)
    windows = [[h[k] if k < len(h) else pooled for h in holding] for k in range(depth)]
    lengths = [float(e - s) for s, e in zip(starts, ends, strict=True)]
    return (
        torch.tensor(windows, dtype=torch.long, device=device),
        torch.tensor(lengths, dtype=torch.float32, device=device),
    )


def adam(parameters, lr: float) -> torch.optim.Adam:
    """The seed's Adam, fused: one step gives the same bits on any x86-64 CPU.

    torch's default (single-tensor) CPU step takes its denominator's square root with
    `torch.sqrt`, which hands a contiguous float tensor to MKL's vector math (vsSqrt): not
    correctly rounded, and MKL picks that code by CPU vendor even under MKL_CBWR=COMPATIBLE.
    So an Intel Xeon and an AMD EPYC Zen 4 took different first steps from the same
    gradients (the kernel fingerprint's `model.step0.weights`; benchmarks/RESULTS.md, "Adam's
    square root"). The fused step is ATen's own kernel, chosen by ATEN_CPU_CAPABILITY alone
    (capped by portable kernels), and calls no MKL.
    """
    return torch.optim.Adam(parameters, lr=lr, fused=True)


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class CNNClassifier(nn.Module):
    """4 conv blocks -> adaptive pool -> Linear(4096, 512) -> ReLU -> Dropout -> Linear."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        channels = (config.in_channels, *config.widths)
        self.features = nn.Sequential(
            *(conv_block(c_in, c_out) for c_in, c_out in itertools.pairwise(channels)),
            AdaptiveAvgPool2d(config.pooled_size),
            nn.Flatten(),
        )
        flat_dim = config.widths[-1] * config.pooled_size**2
        self.embed = nn.Sequential(nn.Linear(flat_dim, config.embedding_dim), nn.ReLU(inplace=True))
        self.head = nn.Sequential(
            nn.Dropout(config.dropout), nn.Linear(config.embedding_dim, config.num_classes)
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, embedding_dim): the penultimate layer, used for recommendations."""
        return self.embed(self.features(x))

    def forward_appearance(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, widths[-1]): the last conv block's channels, each averaged over
        the image. Images unlike the training data stand apart here more clearly than in
        the embedding, which training pulls toward the classes (see `catalog`)."""
        return self.features[:-2](x).mean(dim=(2, 3))  # features[:-2]: the conv blocks

    def forward_catalog(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, embedding_dim + widths[-1]): `forward_features` and
        `forward_appearance` side by side, from one pass of the conv blocks."""
        maps = self.features[:-2](x)  # (B, C, h, w)
        embedding = self.embed(self.features[-2:](maps))  # the pool and flatten, then embed
        return torch.cat([embedding, maps.mean(dim=(2, 3))], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, num_classes) logits."""
        return self.head(self.forward_features(x))
