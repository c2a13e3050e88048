"""Incremental embedding: a grown catalog's vectors are the bytes of a from-scratch pass, and
the kept vectors (.imgrec/vectors) are keyed, bounded and never trusted when broken."""

import os

import numpy as np
import pytest
import torch

from imgrec.recommender.embed import FULL_BATCH, Embedded, embed_catalog
from imgrec.recommender.kept_vectors import KEPT_KEYS, VectorKey, kept_vectors, load_kept, save_kept
from imgrec.training.inference import catalog_vectors
from imgrec.training.model import CNNClassifier, ModelConfig

N_IMAGES = 2 * FULL_BATCH + 37  # two full batches and a partial one


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CNNClassifier(ModelConfig(num_classes=3, widths=(4, 8, 8, 16), embedding_dim=16))


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (N_IMAGES, 16, 16, 3), np.uint8)


@pytest.fixture(scope="module")
def from_scratch(model, images, deterministic_module):
    return catalog_vectors(model, images, batch_size=FULL_BATCH)


@pytest.fixture(scope="module")
def deterministic_module():
    from imgrec.pipeline import runtime

    threads = torch.get_num_threads()
    runtime.make_deterministic(2)
    yield
    torch.set_num_threads(threads)


def test_the_kernels_give_a_batch_member_the_same_bits_wherever_it_sits(
    model, images, deterministic_module
):
    """What embed_catalog relies on: in full batches, an image's vectors do not depend on
    its place in the batch or on the images beside it."""
    batch = images[:FULL_BATCH]
    order = np.random.default_rng(1).permutation(FULL_BATCH)
    plain = catalog_vectors(model, batch)
    shuffled = catalog_vectors(model, batch[order])
    assert all(np.array_equal(p[order], s) for p, s in zip(plain, shuffled, strict=True))


def test_nothing_kept_gives_the_bytes_of_one_pass(model, images, from_scratch):
    embedded = embed_catalog(model, images, None, "cpu")
    assert np.array_equal(embedded.embeddings, from_scratch[0])
    assert np.array_equal(embedded.appearance, from_scratch[1])
    assert embedded.new_images == N_IMAGES and embedded.final_batch == 37


@pytest.mark.parametrize(
    "kept_rows",
    [
        slice(0, 500),  # appended 49: the old final batch becomes a full one
        slice(0, FULL_BATCH),  # appended across a batch boundary
        slice(100, N_IMAGES),  # rows added in front: every position moves
        slice(0, N_IMAGES, 3),  # every third kept
    ],
)
def test_a_grown_catalog_embeds_only_its_new_images_to_the_same_bytes(
    model, images, from_scratch, kept_rows
):
    before = embed_catalog(model, images[kept_rows], None, "cpu")
    grown = embed_catalog(model, images, before.kept, "cpu")
    assert np.array_equal(grown.embeddings, from_scratch[0])
    assert np.array_equal(grown.appearance, from_scratch[1])
    assert grown.new_images == N_IMAGES - len(range(N_IMAGES)[kept_rows])


def test_a_repeated_image_is_embedded_once(model, images):
    doubled = np.concatenate([images[:10], images[:10]])
    embedded = embed_catalog(model, doubled, None, "cpu")
    assert embedded.new_images == 10 and len(embedded.kept.pixel_hashes) == 10
    assert np.array_equal(embedded.embeddings[:10], embedded.embeddings[10:])


def test_kept_vectors_come_back_only_under_their_own_key(model, images, tmp_path):
    embedded = embed_catalog(model, images[:40], None, "cpu")
    key = VectorKey.here("a" * 32, torch.device("cpu"), "portable")
    save_kept(tmp_path, key, embedded.kept)
    kept = load_kept(tmp_path, key)
    assert np.array_equal(kept.pixel_hashes, embedded.kept.pixel_hashes)
    assert np.array_equal(kept.embeddings, embedded.kept.embeddings)
    assert load_kept(tmp_path, VectorKey.here("b" * 32, torch.device("cpu"), "portable")) is None
    native = VectorKey.here("a" * 32, torch.device("cpu"), "native")
    assert native.folder_name != key.folder_name and load_kept(tmp_path, native) is None


def test_broken_kept_vectors_are_ignored_with_one_line(model, images, tmp_path, caplog):
    embedded = embed_catalog(model, images[:8], None, "cpu")
    key = VectorKey.here("a" * 32, torch.device("cpu"), "portable")
    save_kept(tmp_path, key, embedded.kept)
    (tmp_path / key.folder_name / "embeddings.npy").write_bytes(b"not numpy")
    assert load_kept(tmp_path, key) is None
    assert "ignoring the kept vectors" in caplog.text


def test_only_the_most_recently_used_keys_are_kept(model, images, tmp_path):
    embedded = embed_catalog(model, images[:4], None, "cpu")
    keys = [VectorKey.here(f"{i}" * 32, torch.device("cpu"), "portable") for i in range(3)]
    for age, key in enumerate(keys[:KEPT_KEYS]):
        save_kept(tmp_path, key, embedded.kept)
        stamp = 1_000_000_000 + age  # distinct times whatever the clock's resolution
        os.utime(tmp_path / key.folder_name, (stamp, stamp))
    assert load_kept(tmp_path, keys[0]) is not None  # used again: now the newest
    save_kept(tmp_path, keys[2], embedded.kept)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([keys[0].folder_name, keys[2].folder_name])  # keys[1] forgotten


def test_on_the_cpu_an_images_place_in_the_batch_does_not_matter(model, images):
    from imgrec.recommender.embed import batch_position_matters

    assert not batch_position_matters(model, images, "cpu")
    assert not batch_position_matters(model, images[:3], "cpu")  # repeated to a full batch


def test_where_the_place_matters_everything_is_embedded_as_one_pass(
    model, images, from_scratch, monkeypatch
):
    """What a GPU with TF32 gets (measured on an H200): a full pass, nothing kept."""
    import imgrec.recommender.embed

    kept = embed_catalog(model, images[:100], None, "cpu").kept
    monkeypatch.setattr(imgrec.recommender.embed, "batch_position_matters", lambda *args: True)
    grown = embed_catalog(model, images, kept, "cpu")
    assert np.array_equal(grown.embeddings, from_scratch[0])
    assert np.array_equal(grown.appearance, from_scratch[1])
    assert grown.kept is None and grown.new_images == N_IMAGES
    assert "keeping none: here an image's vectors depend on its place" in grown.summary("kept")


@pytest.mark.parametrize(
    ("total", "new", "reused", "final", "says"),
    [
        (1797, 1797, 0, 5, "1797 of 1797 images; none were in kept; the last 5 again unpadded"),
        (1797, 0, 1797, 5, "embedded 0 of 1797 images; reused the vectors of 1797 from kept;"),
        (240, 40, 200, 240, "reused the vectors of 200 from kept; all 240 again as one unpadded"),
        (20, 10, 0, 20, "embedded 10 of 20 images (10 more are pixel copies of them); none"),
        (512, 12, 500, 0, "reused the vectors of 500 from kept"),
    ],
)
def test_the_embed_line_says_what_was_computed_and_what_reused(total, new, reused, final, says):
    vectors = np.zeros((total, 2), np.float32)
    kept = kept_vectors(np.zeros((total, 16), np.uint8), vectors, vectors)
    line = Embedded(vectors, vectors, kept, new, reused, final).summary("kept")
    assert says in line
    assert ("others were kept" not in line) and (final or "again" not in line)
