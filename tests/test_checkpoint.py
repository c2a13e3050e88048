"""Checkpoints: a round trip rebuilds the same model; loading never executes code."""

from pathlib import Path

import pytest
import torch

from imgrec.checkpoint import load_checkpoint, save_checkpoint
from imgrec.errors import ImgrecError
from imgrec.model import CNNClassifier, ModelConfig

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


def test_round_trip_gives_identical_outputs_names_and_preprocessing(tmp_path, model):
    path = tmp_path / "models" / "model.pt"
    save_checkpoint(path, model, CLASS_NAMES, img_size=32)
    loaded, info = load_checkpoint(path)

    assert not loaded.training
    assert loaded.config == model.config
    assert info["class_names"] == CLASS_NAMES
    assert info["preprocessing"]["img_size"] == 32
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_save_leaves_no_temp_file(tmp_path, model):
    save_checkpoint(tmp_path / "model.pt", model, CLASS_NAMES, img_size=32)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_saving_twice_gives_identical_bytes(tmp_path, model):
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, CLASS_NAMES, img_size=32)
    first = path.read_bytes()
    save_checkpoint(path, model, CLASS_NAMES, img_size=32)
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
