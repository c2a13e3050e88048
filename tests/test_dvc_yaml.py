"""dvc.yaml stays honest: deps match imports, params match configs, commands carry paths only."""

import dataclasses
from pathlib import Path

import pytest
import yaml
from conftest import stage_configs

from imgrec import stage_deps
from imgrec.pipeline import lock
from imgrec.stage_deps import derived_deps

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
CONFIGS = stage_configs()


@pytest.mark.parametrize("name", list(PIPELINE["stages"]))
def test_stage_lists_its_script_and_every_module_it_imports(name):
    stage = PIPELINE["stages"][name]
    assert f"stages/{name}.py" in stage["deps"]
    assert any(
        d.startswith("src/imgrec/") and d.endswith(f"/{name}.py") for d in stage["deps"]
    )  # one home per stage: script and module
    listed = sorted(dep for dep in stage["deps"] if dep.startswith("src/"))
    assert listed == derived_deps(ROOT, ROOT / "stages" / f"{name}.py"), name


def test_the_deps_command_rewrites_a_stale_list_and_nothing_else(tmp_path):
    text = (ROOT / "dvc.yaml").read_text()
    stale = text.replace(
        "      - src/imgrec/training/model.py\n", "", 1
    )  # the first stage using it
    stale = stale.replace("      - src/imgrec/errors.py\n", "      - src/imgrec/gone.py\n", 1)
    # The last stage with no package dep at all, as a new stage is first written.
    head, figure = stale.split("\n  figure:\n")
    figure = "".join(line for line in figure.splitlines(True) if "- src/imgrec/" not in line)
    stale = f"{head}\n  figure:\n{figure}"
    assert stale != text
    (tmp_path / "dvc.yaml").write_text(stale)
    (tmp_path / "src").symlink_to(ROOT / "src")
    (tmp_path / "stages").symlink_to(ROOT / "stages")
    assert stage_deps.main(["--root", str(tmp_path)]) == 1  # the check CI runs
    assert stage_deps.main(["--root", str(tmp_path), "--write"]) == 0
    assert (tmp_path / "dvc.yaml").read_text() == text
    assert stage_deps.main(["--root", str(tmp_path)]) == 0


def test_dvc_lock_records_the_code_and_params_committed_with_it(tmp_path):
    """A source file or param changed after the last `dvc repro` is named; so CI fails in its
    lint step, not after reproducing (a comment edit to train.py once cost a CI run)."""
    assert lock.stale_entries(ROOT) == [], "run `dvc repro` and commit dvc.lock"
    for name in ("dvc.lock", "params.yaml"):
        (tmp_path / name).write_text((ROOT / name).read_text())
    for name in ("src", "stages"):
        (tmp_path / name).symlink_to(ROOT / name)
    assert lock.main(["--root", str(tmp_path)]) == 0
    edited = (ROOT / "dvc.lock").read_text().replace(
        "path: src/imgrec/training/train.py\n      hash: md5\n      md5: ",
        "path: src/imgrec/training/train.py\n      hash: md5\n      md5: 0", 1)  # fmt: skip
    (tmp_path / "dvc.lock").write_text(edited)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS | {"top_k": PARAMS["top_k"] + 1}))
    assert lock.stale_entries(tmp_path) == [
        "train: src/imgrec/training/train.py", "recommend: param top_k"
    ]  # fmt: skip
    assert lock.main(["--root", str(tmp_path)]) == 1


@pytest.mark.parametrize("name", ["train", "evaluate", "embed"])
def test_neither_the_decoder_nor_the_fetch_code_is_a_dep_after_prepare(name):
    deps = set(PIPELINE["stages"][name]["deps"])
    assert not deps & {
        "src/imgrec/data/images.py",
        "src/imgrec/data/fetch.py",
        "src/imgrec/data/prepare.py",
    }


@pytest.mark.parametrize("name", list(PIPELINE["stages"]))
def test_stage_params_are_exactly_its_config_fields(name):
    fields = [field.name for field in dataclasses.fields(CONFIGS[name])]
    assert set(PIPELINE["stages"][name].get("params", [])) == set(fields)
    assert set(fields) <= set(PARAMS), f"{name} uses params missing from params.yaml"


@pytest.mark.parametrize("name", list(PIPELINE["stages"]))
def test_commands_pass_paths_only(name):
    command = PIPELINE["stages"][name]["cmd"]
    assert "${" not in command
    assert not any(char in command for char in "'\"$`;|&")


def test_every_param_is_used_by_some_stage():
    used = {p for stage in PIPELINE["stages"].values() for p in stage.get("params", [])}
    assert used == set(PARAMS)


def test_params_are_flat():
    assert all(not isinstance(value, dict | list) for value in PARAMS.values())


@pytest.mark.parametrize("name", list(PIPELINE["stages"]))
def test_config_defaults_are_the_params_yaml_values(name):
    """Tests and benchmarks build configs from the dataclass defaults: they are params.yaml's."""
    for field in dataclasses.fields(CONFIGS[name]):
        assert field.default == PARAMS[field.name], f"{name}: {field.name}"
