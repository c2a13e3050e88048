"""DDP through torchrun's launcher: ranks agree, repeat bit for bit, and fail in one line."""

import argparse
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import train_stage_command

from imgrec.errors import ImgrecError
from imgrec.pipeline import ddp
from imgrec.training.checkpoint import load_checkpoint, save_checkpoint
from imgrec.training.model import CNNClassifier, ModelConfig
from imgrec.training.train import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = {"batch_size": 8, "epochs": 3, "patience": 1, "lr_patience": 0, "num_threads": 2}


@pytest.fixture(scope="module")
def prepared(tiny_prepared) -> Path:
    return tiny_prepared


# Each rank trains as the train stage does and saves what it ended with, so the ranks
# can be compared with each other and not only rank 0's checkpoint with itself.
RANK_SCRIPT = """
import imgrec, json, sys, torch
from imgrec.pipeline import ddp, runtime
from imgrec.training.model import CNNClassifier, ModelConfig
from imgrec.data.prepared import load_prepared
from imgrec.training.train import TrainConfig, train

prepared, out, overrides = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
config = TrainConfig(**overrides)
world = runtime.World.from_environment()
device = runtime.start(config, world)
generator = runtime.seed_everything(config.seed + world.rank)
data = load_prepared(prepared)
model = CNNClassifier(ModelConfig(num_classes=len(data.class_names)))
with ddp.process_group(world, device):
    result = train(model, data, config, generator=generator, device=device, world=world,
                   max_batches=2)
torch.save({"state": model.state_dict(), "history": result.history,
            "threads": torch.get_num_threads()}, f"{out}/rank{world.rank}.pt")
"""


def train_in_two_ranks(prepared: Path, out: Path) -> list[dict]:
    out.mkdir()
    ddp.launch(2, ["-c", RANK_SCRIPT, str(prepared), str(out), json.dumps(TINY)])
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


def assert_same_weights(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for key, value in first.items():
        assert torch.equal(second[key], value), key


@pytest.mark.slow  # 10-35 s here: training subprocesses, a cluster or a timeout
def test_two_ranks_agree_and_repeat_bit_for_bit(prepared, tmp_path):
    rank0, rank1 = train_in_two_ranks(prepared, tmp_path / "first")
    # Same validation totals on both ranks: same LR steps, same early stop, same weights.
    assert rank0["history"] == rank1["history"]
    assert_same_weights(rank0["state"], rank1["state"])
    assert rank0["threads"] == rank1["threads"] == 1  # num_threads 2 shared by 2 ranks
    again, _ = train_in_two_ranks(prepared, tmp_path / "again")
    assert again["history"] == rank0["history"]
    assert_same_weights(again["state"], rank0["state"])


def run_stage(project: Path, prepared: Path, **params) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_stage_command(project, prepared, TINY | params, "--max-batches", "2"),
        cwd=project, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.slow  # 10-35 s here: training subprocesses, a cluster or a timeout
def test_the_stage_trains_in_two_ranks_and_rank_0_alone_writes(prepared, tmp_path):
    result = run_stage(tmp_path, prepared, nproc=2)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("dataset:") == 1  # the other rank is quiet
    assert result.stdout.count("epoch 1/3") == 1
    assert "rank 0 of 2" in result.stdout
    checkpoint = load_checkpoint(tmp_path / "models" / "model.pt")
    assert checkpoint.train_config["nproc"] == 2
    assert (tmp_path / "train.json").exists()
    assert (tmp_path / "dvclive" / "plots" / "metrics" / "val" / "loss.tsv").exists()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["model.pt"]


def test_a_batch_that_does_not_split_is_refused_before_any_rank_starts(prepared, monkeypatch):
    spec = importlib.util.spec_from_file_location("train_stage", ROOT / "stages" / "train.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(ddp, "launch", lambda nproc: pytest.fail("a rank started"))
    args = argparse.Namespace(prepared=str(prepared))
    message = r"param batch_size \(8\) must be divisible by the number of ranks \(3, param nproc"
    with pytest.raises(ImgrecError, match=message):
        stage.main(args, TrainConfig(nproc=3, batch_size=8))


def test_launch_gives_each_rank_torchruns_environment(tmp_path):
    code = (
        "import os, pathlib, sys; e = os.environ; pathlib.Path(sys.argv[1], e['RANK']).write_text("
        "' '.join(e[k] for k in ('WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR')))"
    )
    ddp.launch(2, ["-c", code, str(tmp_path)])
    assert (tmp_path / "0").read_text() == "2 0 2 localhost"
    assert (tmp_path / "1").read_text() == "2 1 2 localhost"


@pytest.mark.parametrize(
    ("code", "message"),
    [
        ("import os, sys; sys.exit(int(os.environ['RANK']))", "rank 1 of 2 failed; its message"),
        (
            "import os; os.environ['RANK'] == '1' and os.kill(os.getpid(), 9)",
            "rank 1 of 2 was killed by SIGKILL.",
        ),
    ],
)
def test_a_failed_rank_fails_the_launch_in_one_sentence(code, message, capfd):
    with pytest.raises(ImgrecError, match=message):
        ddp.launch(2, ["-c", code])
    assert "Traceback" not in capfd.readouterr().err  # the launcher's own dump is silenced


def test_a_checkpoint_from_before_nproc_still_loads(tmp_path):
    path = tmp_path / "model.pt"
    model = CNNClassifier(ModelConfig(num_classes=2))
    config = TrainConfig().identity(1)
    save_checkpoint(path, model, ["a", "b"], 16, train_config=config, prepared_md5="0")
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["provenance"]["train_config"]["nproc"]  # as files written before it
    torch.save(checkpoint, path)
    assert load_checkpoint(path).train_config == {k: v for k, v in config.items() if k != "nproc"}
