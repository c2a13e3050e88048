"""dvc.yaml stays honest: DVC does not follow imports, so each stage must list them."""

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def imgrec_imports(path: Path) -> set[str]:
    """Package modules a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgrec"):
            if node.module == "imgrec":
                found |= {f"imgrec.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("imgrec.")}
    return found


def module_file(module: str) -> Path:
    return ROOT / "src" / (module.replace(".", "/") + ".py")


def transitive_imports(script: Path) -> set[str]:
    seen, todo = set(), list(imgrec_imports(script))
    while todo:
        module = todo.pop()
        if module in seen or not module_file(module).exists():
            continue
        seen.add(module)
        todo += imgrec_imports(module_file(module))
    return {str(module_file(m).relative_to(ROOT)) for m in seen}


@pytest.mark.parametrize("name", list(PIPELINE["stages"]))
def test_stage_lists_its_script_and_every_module_it_imports(name):
    stage = PIPELINE["stages"][name]
    script = ROOT / "stages" / f"{name}.py"
    assert f"stages/{name}.py" in stage["deps"]
    listed = {dep for dep in stage["deps"] if dep.startswith("src/")}
    assert listed == transitive_imports(script), f"stage {name}: deps and imports differ"


@pytest.mark.parametrize("name", list(PIPELINE["stages"]))
def test_stage_params_are_exactly_those_its_command_uses(name):
    stage = PIPELINE["stages"][name]
    used = set(re.findall(r"\$\{(\w+)\}", stage["cmd"]))
    assert used == set(stage.get("params", []))
    assert used <= set(PARAMS), f"{name} uses params missing from params.yaml"


def test_every_param_is_used_by_some_stage():
    used = {p for stage in PIPELINE["stages"].values() for p in stage.get("params", [])}
    assert used == set(PARAMS)


def test_params_are_flat():
    assert all(not isinstance(value, dict | list) for value in PARAMS.values())
