"""dvc.yaml stays honest: deps match imports, params match configs, commands carry paths only."""

import ast
import dataclasses
from pathlib import Path

import pytest
import yaml
from conftest import stage_configs

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = yaml.safe_load((ROOT / "dvc.yaml").read_text())
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
CONFIGS = stage_configs()


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Nodes under `if TYPE_CHECKING:`: imports for annotations, never run."""
    return {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for sub in ast.walk(node)
    }


def imgrec_imports(path: Path) -> set[str]:
    """Package modules a file imports, at the top or inside functions (the package too)."""
    tree = ast.parse(path.read_text())
    skip, found = _type_checking_only(tree), set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgrec"):
            found.add("imgrec")  # importing any module runs the package's __init__ first
            if node.module == "imgrec":
                found |= {f"imgrec.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("imgrec")}
    return found


def module_file(module: str) -> Path:
    if module == "imgrec":
        return ROOT / "src" / "imgrec" / "__init__.py"
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


@pytest.mark.parametrize("name", ["train", "evaluate", "embed"])
def test_neither_the_decoder_nor_the_fetch_code_is_a_dep_after_prepare(name):
    deps = set(PIPELINE["stages"][name]["deps"])
    assert not deps & {"src/imgrec/images.py", "src/imgrec/sources.py", "src/imgrec/preparation.py"}


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
