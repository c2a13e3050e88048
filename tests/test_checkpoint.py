"""Checkpoints: a round trip rebuilds the same model; loading never executes code."""

from pathlib import Path

import pytest
import torch

from imgrec.errors import ImgrecError
from imgrec.training.checkpoint import check_matches, load_checkpoint, save_checkpoint
from imgrec.training.model import CNNClassifier, ModelConfig
from imgrec.training.train import TrainConfig

CLASS_NAMES = ["cat", "dog", "fish"]


def _write_marker(path: str) -> None:
    Path(path).write_text("code ran")


class Exploit:
    """Unpickling this runs `_write_marker`: what a hostile model file would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return _write_marker, (str(self.marker),)


@pytest.fixture
def model() -> CNNClassifier:
    torch.manual_seed(0)
    model = CNNClassifier(ModelConfig(num_classes=len(CLASS_NAMES), dropout=0.3))
    # Non-default BatchNorm statistics, so the round trip must carry buffers too.
    model.train()
    model(torch.rand(4, 3, 32, 32))
    return model.eval()


TRAIN_CONFIG = TrainConfig(epochs=3, lr=1e-05, dropout=0.3, augment=True)


def save(path, model) -> None:
    save_checkpoint(
        path,
        model,
        CLASS_NAMES,
        img_size=32,
        train_config=TRAIN_CONFIG.identity(1),
        prepared_md5="0" * 32,
    )


def test_round_trip_gives_identical_outputs_names_and_provenance(tmp_path, model):
    path = tmp_path / "models" / "model.pt"
    save(path, model)
    checkpoint = load_checkpoint(path)
    loaded = checkpoint.model

    assert not loaded.training
    assert loaded.config == model.config
    assert checkpoint.class_names == CLASS_NAMES
    assert checkpoint.img_size == 32
    assert checkpoint.train_config == TRAIN_CONFIG.identity(1)  # plain values: no TrainConfig
    assert checkpoint.prepared_md5 == "0" * 32
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_save_leaves_no_temp_file(tmp_path, model):
    save(tmp_path / "model.pt", model)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_saving_twice_gives_identical_bytes(tmp_path, model):
    path = tmp_path / "model.pt"
    save(path, model)
    first = path.read_bytes()
    save(path, model)
    assert path.read_bytes() == first


def test_missing_file_says_to_run_dvc_repro(tmp_path):
    with pytest.raises(ImgrecError, match="dvc repro"):
        load_checkpoint(tmp_path / "absent.pt")


def test_pickled_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    torch.save({"config": Exploit(marker)}, path)
    with pytest.raises(ImgrecError, match="not an imgrec checkpoint"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_file_that_is_not_a_checkpoint_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not a zip file")
    with pytest.raises(ImgrecError, match="not an imgrec checkpoint"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(3)}, path)  # loads, but has no config
    with pytest.raises(ImgrecError, match="not an imgrec checkpoint"):
        load_checkpoint(path)
    path.write_bytes(b"")
    with pytest.raises(ImgrecError, match=r"not an imgrec checkpoint \(.+\)"):
        load_checkpoint(path)


def test_the_message_never_advises_weights_only_false(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"config": Exploit(tmp_path / "marker.txt")}, path)
    with pytest.raises(ImgrecError) as info:
        load_checkpoint(path)
    assert "weights_only=False" not in str(info.value) and "\n" not in str(info.value)


def test_check_matches_refuses_another_image_size(tmp_path, model):
    save(tmp_path / "model.pt", model)
    checkpoint = load_checkpoint(tmp_path / "model.pt")
    check_matches(checkpoint, 32, "data/prepared")
    with pytest.raises(ImgrecError, match=r"trained on 32 px images, but data/prepared holds 64"):
        check_matches(checkpoint, 64, "data/prepared")
