"""The seed's CNN, tested as timm tests its models: tiny CPU input, shapes, no NaNs, gradients."""

import pytest
import torch
from torch import nn

from imgrec.training.model import (
    AdaptiveAvgPool2d,
    CNNClassifier,
    ModelConfig,
    adam,
    adaptive_avg_pool2d_backward,
)

NUM_CLASSES = 5


@pytest.fixture
def model() -> CNNClassifier:
    torch.manual_seed(0)
    return CNNClassifier(ModelConfig(num_classes=NUM_CLASSES))


@pytest.mark.parametrize("img_size", [32, 64])
def test_forward_shapes_without_nans(model, img_size):
    x = torch.rand(2, 3, img_size, img_size)  # (B, C, H, W)
    model.eval()
    logits = model(x)
    features = model.forward_features(x)
    assert logits.shape == (2, NUM_CLASSES)
    assert features.shape == (2, 512)
    assert torch.isfinite(logits).all()
    assert torch.isfinite(features).all()


def test_forward_is_head_of_forward_features(model):
    model.eval()
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(model(x), model.head(model.forward_features(x)))


def test_forward_appearance_is_the_last_conv_blocks_channel_means(model):
    x = torch.rand(2, 3, 64, 64)
    appearance = model.forward_appearance(x)
    assert appearance.shape == (2, model.config.widths[-1])
    maps = model.features[:-2](x)  # (B, C, 4, 4) after four 2x2 pools
    torch.testing.assert_close(appearance, maps.mean(dim=(2, 3)))
    assert (appearance >= 0).all()  # after ReLU and max-pool


def test_every_parameter_gets_a_gradient(model):
    model.train()
    x = torch.rand(4, 3, 32, 32)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_architecture_matches_the_seed(model):
    blocks = [m for m in model.features if isinstance(m, nn.Sequential)]
    assert len(blocks) == 4
    in_channels = 3
    for block, width in zip(blocks, (32, 64, 128, 256), strict=True):
        conv, norm, relu, pool = block
        assert isinstance(conv, nn.Conv2d)
        assert (conv.in_channels, conv.out_channels) == (in_channels, width)
        assert conv.kernel_size == (3, 3)
        assert conv.padding == (1, 1)
        assert isinstance(norm, nn.BatchNorm2d)
        assert norm.num_features == width
        assert isinstance(relu, nn.ReLU)
        assert isinstance(pool, nn.MaxPool2d)
        assert pool.kernel_size == 2
        in_channels = width

    pools = [m for m in model.features if isinstance(m, nn.AdaptiveAvgPool2d)]
    assert [p.output_size for p in pools] == [4]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4096, 512), (512, NUM_CLASSES)]
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in dropouts] == [0.5]
    # Dropout sits between the embedding and the classifier, after the ReLU.
    assert isinstance(model.embed[-1], nn.ReLU)
    assert model.head[0] is dropouts[0]


def test_dropout_is_configurable():
    model = CNNClassifier(ModelConfig(num_classes=2, dropout=0.2))
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.2]


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout(model):
    x = torch.rand(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
    model.train()
    torch.manual_seed(1)
    first = model(x)
    torch.manual_seed(2)
    assert not torch.equal(first, model(x))


# ---- the pool on CUDA: deterministic backward, the same CPU bits ---------------------------

# The last conv block's map is img_size // 16 per side: 32, 64, 128 and 224 px, and sizes
# that 16 does not divide (40 -> 2, 72 -> 4, 100 -> 6, 180 -> 11), non-square too.
MAP_SIZES = [(1, 1), (2, 2), (4, 4), (8, 8), (14, 14), (6, 6), (11, 11), (3, 5), (13, 7)]


@pytest.mark.parametrize("size", MAP_SIZES)
def test_pool_cuda_backward_formula_matches_aten(size):
    """The gather backward CUDA runs, computed here on CPU tensors, against aten's."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, requires_grad=True)
    y = nn.functional.adaptive_avg_pool2d(x, 4)
    grad = torch.randn_like(y)
    y.backward(grad)
    mine = adaptive_avg_pool2d_backward(grad, x.detach())
    torch.testing.assert_close(mine, x.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", MAP_SIZES)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pool_on_the_cpu_is_torchs_bit_for_bit(size, layout, dtype):
    torch.manual_seed(0)
    x = torch.randn(2, 3, *size, dtype=dtype).contiguous(memory_format=layout)
    grads = []
    for pool in (nn.AdaptiveAvgPool2d(4), AdaptiveAvgPool2d(4)):
        leaf = x.clone().contiguous(memory_format=layout).requires_grad_()
        y = pool(leaf)
        y.backward(torch.ones_like(y).mul_(0.37).cumsum(0))
        grads.append((y.detach(), leaf.grad))
    (y_torch, g_torch), (y_mine, g_mine) = grads
    assert torch.equal(y_mine, y_torch)
    assert torch.equal(g_mine, g_torch)
    assert g_mine.stride() == g_torch.stride()


def test_training_steps_give_the_bits_of_torchs_pool():
    """The whole model, a few Adam steps at a size 16 does not divide: the same weights."""
    states = []
    for pool in (AdaptiveAvgPool2d, nn.AdaptiveAvgPool2d):
        torch.manual_seed(0)
        model = CNNClassifier(ModelConfig(num_classes=3)).to(memory_format=torch.channels_last)
        model.features[-2] = pool(4)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(1)
        for _ in range(3):
            x = torch.rand(4, 3, 40, 40, generator=generator)
            loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        states.append(model.state_dict())
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_old_checkpoints_load_into_the_model():
    old = CNNClassifier(ModelConfig(num_classes=3))
    old.features[-2] = nn.AdaptiveAvgPool2d(4)  # the model before its own pool
    CNNClassifier(ModelConfig(num_classes=3)).load_state_dict(old.state_dict(), strict=True)


# ---- no op without a deterministic CUDA backward (CI has no GPU) ---------------------------

# The backward nodes of the ops that "will throw a RuntimeError when mode=True" on CUDA, from
# the docs of torch.use_deterministic_algorithms (torch 2.14:
# https://docs.pytorch.org/docs/stable/generated/torch.use_deterministic_algorithms.html).
# NLLLoss: its CUDA kernel alerts for the spatial (2D) form only; the (B, C) form the
# training loss uses ran under strict determinism on an H200 (2026-12-04).
# MaxPool3d: listed in older torch versions.
NO_DETERMINISTIC_CUDA_BACKWARD = {
    "AvgPool3DBackward0",
    "AdaptiveAvgPool2DBackward0",
    "AdaptiveAvgPool3DBackward0",
    "AdaptiveMaxPool2DBackward0",
    "AdaptiveMaxPool3DBackward0",
    "FractionalMaxPool2DBackward0",
    "FractionalMaxPool3DBackward0",
    "MaxUnpool2DBackward0",  # MaxUnpool1d and 2d
    "MaxUnpool3DBackward0",
    "UpsampleLinear1DBackward0",  # interpolate: linear, bilinear, bicubic, trilinear
    "UpsampleBilinear2DBackward0",
    "UpsampleBilinear2DAaBackward0",
    "UpsampleBicubic2DBackward0",
    "UpsampleBicubic2DAaBackward0",
    "UpsampleTrilinear3DBackward0",
    "ReflectionPad1DBackward0",
    "ReflectionPad2DBackward0",
    "ReflectionPad3DBackward0",
    "NllLoss2DBackward0",
    "CtcLossBackward0",
    "CtcLossBackward1",
    "EmbeddingBagBackward0",  # mode='max'
    "PutBackward0",
    "GridSampler2DBackward0",
    "GridSampler3DBackward0",
    "ScatterReduceBackward0",  # reduce='prod'
    "MaxPool3DWithIndicesBackward0",
}


def backward_nodes(loss: torch.Tensor) -> set[str]:
    """The names of every node in `loss`'s autograd graph."""
    names, seen, todo = set(), set(), [loss.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return names


def training_loss(model: CNNClassifier, img_size: int) -> torch.Tensor:
    """A forward and the loss as `train.train_epoch` computes them, augmentation included."""
    from imgrec.training.train import augment_batch

    model.train().to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    x = augment_batch(torch.rand(2, 3, img_size, img_size), generator)
    x = x.contiguous(memory_format=torch.channels_last)
    return nn.functional.cross_entropy(model(x).float(), torch.tensor([0, 1]))


@pytest.mark.parametrize("img_size", [32, 64, 128, 224, 40, 100])
def test_every_backward_op_has_a_deterministic_cuda_kernel(model, img_size):
    nodes = backward_nodes(training_loss(model, img_size))
    assert "MaxPool2DWithIndicesBackward0" in nodes  # the walk reaches the conv blocks
    assert not nodes & NO_DETERMINISTIC_CUDA_BACKWARD


def test_the_walk_finds_torchs_adaptive_pool(model):
    """The crash this guards against: torch's own pool, as the model had it."""
    model.features[-2] = nn.AdaptiveAvgPool2d(4)
    nodes = backward_nodes(training_loss(model, 64))
    assert nodes & NO_DETERMINISTIC_CUDA_BACKWARD == {"AdaptiveAvgPool2DBackward0"}


# One Adam step of the model's first Linear layer (2M weights: MKL's vector math takes a
# contiguous tensor of this size), printed as md5s of the fused step and torch's default.
ADAM_STEP = """
import hashlib, torch
from imgrec.training.model import adam
generator = torch.Generator().manual_seed(0)
def step(make):
    weight = torch.nn.Parameter(torch.randn(512, 4096, generator=generator) * 0.02)
    weight.grad = torch.randn(512, 4096, generator=generator) * 1e-3
    make([weight], 1e-3).step()
    return hashlib.md5(weight.detach().numpy().tobytes()).hexdigest()
print(step(adam), step(lambda params, lr: torch.optim.Adam(params, lr=lr)))
"""


@pytest.mark.slow  # 10-35 s here: training subprocesses, a cluster or a timeout
def test_adam_steps_to_the_same_bits_whichever_branch_mkl_takes():
    """MKL picks its code by CPU vendor as well as by MKL_CBWR; torch's default CPU step
    took its square root from MKL (so an Intel Xeon and an AMD EPYC Zen 4 trained apart).
    One machine shows it by switching MKL's branch: portable's COMPATIBLE, AVX2, MKL's own
    pick with torch's native kernels. The fused step must not move."""
    import os
    import subprocess
    import sys

    environments = [
        {"IMGREC_KERNELS": "portable"},  # MKL_CBWR=COMPATIBLE, ATEN_CPU_CAPABILITY=avx2
        {"IMGREC_KERNELS": "native", "MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
        {"IMGREC_KERNELS": "native"},
    ]
    fused, default = set(), set()
    for changes in environments:
        environment = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR",)}
        done = subprocess.run([sys.executable, "-c", ADAM_STEP], env=environment | changes,
                              capture_output=True, text=True, check=True)  # fmt: skip
        ours, torchs = done.stdout.split()
        fused.add(ours)
        default.add(torchs)
    assert len(fused) == 1, (fused, default)


def test_adam_is_torchs_adam_within_float_error(model):
    """Three steps from the same gradients: only the update's rounding may differ."""
    generator = torch.Generator().manual_seed(1)
    ours = [p.detach().clone().requires_grad_() for p in model.parameters()]
    theirs = [p.detach().clone().requires_grad_() for p in model.parameters()]
    for mine, other in zip(ours, theirs, strict=True):
        mine.grad = torch.randn(mine.shape, generator=generator) * 1e-3
        other.grad = mine.grad.clone()
    optimizers = [adam(ours, 1e-3), torch.optim.Adam(theirs, 1e-3)]
    for _ in range(3):
        for optimizer in optimizers:
            optimizer.step()
    for mine, other in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, other, rtol=1e-6, atol=1e-9)
    moved = max(
        (mine - before).abs().max() for mine, before in zip(ours, model.parameters(), strict=True)
    )
    assert moved > 1e-3  # three steps of about lr each: the comparison saw real updates
    assert optimizers[0].defaults["fused"] and not optimizers[1].defaults["fused"]
