"""The seed's CNN, tested as timm tests its models: tiny CPU input, shapes, no NaNs, gradients."""

import pytest
import torch
from torch import nn

from imgrec.model import CNNClassifier, ModelConfig

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
