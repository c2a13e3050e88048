"""The kernels' per-operation fingerprint: stable on one machine, and it names what differs."""

import subprocess
import sys

import pytest
import yaml
from conftest import ROOT

from imgrec import fingerprint
from imgrec.fingerprint import Fingerprint, Setup

TINY = Setup(img_size=16, batch_size=4, channels_last=True, precision="fp32", num_threads=2,
             device="cpu")  # fmt: skip


@pytest.fixture(scope="module")
def tiny() -> Fingerprint:
    return fingerprint.compute(TINY, widths=(4, 8, 8, 8))


def test_the_same_setup_gives_the_same_fingerprint(tiny, deterministic_torch):
    again = fingerprint.compute(TINY, widths=(4, 8, 8, 8))
    assert again == tiny and not again.differing(tiny)
    # every layer's three passes, the pieces between them, and the whole model's steps
    assert {"conv4.backward_weights", "batchnorm.backward", "cross_entropy.backward",
            "model.step2.weights", "model.embedding"} <= tiny.operations.keys()  # fmt: skip
    assert len(set(tiny.operations.values())) == len(tiny.operations)  # all distinct outputs


def test_the_file_holds_settings_and_hashes_only(tiny, tmp_path):
    path = tmp_path / "fp.txt"
    fingerprint.save(path, tiny)
    assert fingerprint.load(path) == tiny
    text = path.read_text()
    assert "# img_size 16\n" in text and "# device cpu\n" in text
    assert "EPYC" not in text and "Xeon" not in text and "torch" not in text


def test_differing_names_the_operations_and_settings(tiny):
    other = Fingerprint(
        tiny.setup | {"num_threads": "1"},
        tiny.operations | {"conv2.forward": "0" * 32, "model.step0.loss": "1" * 32},
    )
    assert other.differing(tiny) == ["setup:num_threads", "conv2.forward", "model.step0.loss"]
    assert other.root(tiny) == (["setup:num_threads", "conv2.forward"], ["model.step0.loss"])
    line = fingerprint.verdict(other, tiny, "committed run")
    assert "differs from the committed run's at setup:num_threads +1 (1 later follow)" in line
    assert "same as the committed run's" in fingerprint.verdict(tiny, tiny, "committed run")


def test_the_first_model_step_that_differs_is_the_root_and_the_line_stays_short(tiny):
    """As on an Intel Xeon against the AMD EPYC Zen 4's run before Adam was fused: every
    single operation equal, the first step's weights and all after them not."""
    model_steps = [name for name in tiny.operations if name.startswith("model.")]
    after_the_update = model_steps[model_steps.index("model.step0.weights") :]
    other = Fingerprint(tiny.setup, tiny.operations | dict.fromkeys(after_the_update, "0" * 32))
    assert other.root(tiny) == (["model.step0.weights"], after_the_update[1:])
    line = fingerprint.verdict(other, tiny, "committed run")
    assert f"at model.step0.weights ({len(after_the_update) - 1} later follow)" in line
    # the train stage prints it in `dvc repro`'s log, read in a terminal
    assert len(line) < 120, line
    every = Fingerprint(
        tiny.setup | {"channels_last": "false", "precision": "bf16"},
        dict.fromkeys(tiny.operations, "0" * 32),
    )
    assert len(fingerprint.verdict(every, tiny, "committed run")) < 120


def test_another_setup_changes_the_bits(tiny):
    """bf16 runs other kernels: a fingerprint that missed it would promise bits it cannot."""
    bf16 = fingerprint.compute(Setup(**{**TINY.__dict__, "precision": "bf16"}), widths=(4, 8, 8, 8))
    assert "conv1.forward" in bf16.differing(tiny)


@pytest.mark.slow  # 10-35 s here: training subprocesses, a cluster or a timeout
def test_the_command_compares_with_a_file_and_fails_on_a_difference(tmp_dir, tiny):
    params = yaml.safe_load((ROOT / "params.yaml").read_text()) | {"img_size": 16, "batch_size": 4}
    (tmp_dir / "params.yaml").write_text(yaml.safe_dump(params))
    command = [sys.executable, "-m", "imgrec.fingerprint"]
    made = subprocess.run([*command, "--out", "here.txt"], capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    assert "machine: " in made.stderr
    same = subprocess.run([*command, "--against", "here.txt"], capture_output=True, text=True)
    assert same.returncode == 0 and "same as the here.txt's" in same.stderr
    edited = fingerprint.load("here.txt")
    edited = Fingerprint(edited.setup, edited.operations | {"linear.forward": "0" * 32})
    fingerprint.save("there.txt", edited)
    other = subprocess.run([*command, "--against", "there.txt"], capture_output=True, text=True)
    assert other.returncode == 1 and "linear.forward" in other.stderr


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"num_threads": 0}, "param num_threads must be >= 1"),
        ({"img_size": "big"}, "param img_size"),
    ],
)
def test_a_bad_param_is_one_sentence(tmp_dir, change, says):
    params = yaml.safe_load((ROOT / "params.yaml").read_text()) | change
    (tmp_dir / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run([sys.executable, "-m", "imgrec.fingerprint"], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 1 and done.stderr.startswith(f"error: {says}"), done.stderr
    assert "Traceback" not in done.stderr
