"""Batched logits and embeddings: shapes, normalisation, and results independent of batching."""

import numpy as np
import pytest
import torch

from imgrec.training.inference import catalog_vectors, embed, predict_logits
from imgrec.training.model import CNNClassifier, ModelConfig

N_CLASSES = 3


@pytest.fixture(scope="module")
def model() -> CNNClassifier:
    torch.manual_seed(0)
    model = CNNClassifier(ModelConfig(num_classes=N_CLASSES))
    model.train()
    model(torch.rand(8, 3, 16, 16))  # non-trivial BatchNorm statistics
    return model.eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)


def test_shapes_and_dtypes(model, images):
    logits = predict_logits(model, images)
    embeddings = embed(model, images)
    assert logits.shape == (10, N_CLASSES)
    assert logits.dtype == torch.float32
    assert embeddings.shape == (10, 512)
    assert embeddings.dtype == np.float32


def test_embeddings_are_unit_length(model, images):
    norms = np.linalg.norm(embed(model, images), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_embeddings_are_normalised_forward_features(model, images):
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        features = model.forward_features(x).numpy()
    expected = features / np.linalg.norm(features, axis=1, keepdims=True)
    np.testing.assert_allclose(embed(model, images, channels_last=False), expected, atol=1e-5)


def test_index_selects_rows_in_order(model, images):
    index = np.array([7, 2, 5])
    np.testing.assert_allclose(
        predict_logits(model, images, index).numpy(),
        predict_logits(model, images).numpy()[index],
        atol=1e-5,
    )
    np.testing.assert_allclose(embed(model, images, index), embed(model, images)[index], atol=1e-5)


def test_empty_index_gives_empty_results(model, images):
    empty = np.array([], dtype=np.int64)
    assert predict_logits(model, images, empty).shape == (0, N_CLASSES)
    assert embed(model, images, empty).shape == (0, 512)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_batch_size_does_not_change_results(model, images, batch_size):
    np.testing.assert_allclose(
        predict_logits(model, images, batch_size=batch_size).numpy(),
        predict_logits(model, images, batch_size=10).numpy(),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        embed(model, images, batch_size=batch_size),
        embed(model, images, batch_size=10),
        atol=1e-5,
    )


def test_channels_last_does_not_change_results(model, images):
    np.testing.assert_allclose(
        predict_logits(model, images, channels_last=True).numpy(),
        predict_logits(model, images, channels_last=False).numpy(),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        embed(model, images, channels_last=True),
        embed(model, images, channels_last=False),
        atol=1e-5,
    )


def test_inference_runs_in_eval_mode(model, images):
    """A model handed over in train mode still predicts without dropout or batch statistics."""
    model.eval()
    expected = predict_logits(model, images)
    model.train()
    torch.testing.assert_close(predict_logits(model, images, batch_size=2), expected)
    assert not model.training


def test_catalog_vectors_are_embed_in_both_spaces_to_the_bit(model, images):
    embeddings, appearance = catalog_vectors(model, images, batch_size=3)
    np.testing.assert_array_equal(embeddings, embed(model, images, batch_size=3))
    np.testing.assert_array_equal(
        appearance, embed(model, images, space="appearance", batch_size=3)
    )
    assert embeddings.shape == (len(images), model.config.embedding_dim)
    assert appearance.shape == (len(images), model.config.widths[-1])


def test_catalog_vectors_of_no_image(model, images):
    embeddings, appearance = catalog_vectors(model, images[:0])
    assert embeddings.shape == (0, model.config.embedding_dim)
    assert appearance.shape == (0, model.config.widths[-1])
