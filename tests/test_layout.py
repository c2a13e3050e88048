"""The package's layout holds: a short root, a docstring per sub-package, imports that run one
way, and no function or file past its size without a stated reason (docs/pipeline.md,
"The code's layout")."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "imgrec"

# Lower layers never import higher ones. The root's base modules (config, errors, files)
# import no sub-package; stage_deps, at the root for `python -m imgrec.stage_deps`, is the
# pipeline's machinery; the commands fingerprint and reproduction sit between training, whose
# model the fingerprint runs, and what uses them.
LAYER = {"base": 0, "pipeline": 1, "data": 2, "training": 3, "commands": 3.5}
LAYER |= {"recommender": 4, "serving": 5}
BASE = {"config", "errors", "files"}
COMMANDS = {"fingerprint", "reproduction"}
FRONT_ENDS = {"cli", "server"}  # what users run; nothing else imports them
MAX_ROOT_MODULES = 12
MAX_FUNCTION, MAX_FILE, MAX_BENCHMARK_FILE = 80, 400, 450


# Files over a limit that cannot carry their reason at the top yet.
def group_of(module: str) -> str:
    """The layer a dotted module name belongs to: its sub-package, or base or commands."""
    parts = module.split(".")
    if len(parts) == 1:
        return "base"  # the package's __init__
    if parts[1] in BASE:
        return "base"
    if parts[1] == "stage_deps":
        return "pipeline"
    if parts[1] in COMMANDS:
        return "commands"
    return parts[1]


def imports(path: Path) -> set[str]:
    """The imgrec modules a file imports, anywhere in it (`from imgrec import x` as imgrec.x)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imgrec"):
            if node.module == "imgrec":
                found |= {f"imgrec.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("imgrec")}
    return found


def violations_of_imports(package: Path) -> list[str]:
    found = []
    for path in sorted(package.rglob("*.py")):
        module = ".".join(("imgrec", *path.relative_to(package).with_suffix("").parts))
        mine = group_of(module)
        for name in imports(path):
            theirs = group_of(name)
            if theirs in FRONT_ENDS:
                if mine not in FRONT_ENDS and module != "imgrec.__main__":
                    found.append(f"{module} imports {name}")
            elif mine in LAYER and theirs in LAYER and LAYER[theirs] > LAYER[mine]:
                found.append(f"{module} imports {name}")
    return found


def over_size(path: Path, max_file: int) -> list[str]:
    text = path.read_text()
    head = "\n".join(text.splitlines()[:12])
    if "# size:" in head:  # `# size: <why this file or a function in it is long>`
        return []
    found = []
    if len(text.splitlines()) > max_file:
        found.append(f"{path.name} has {len(text.splitlines())} lines")
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION:
                found.append(f"{path.name}:{node.name} has {length} lines")
    return found


def test_the_root_holds_few_modules():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= MAX_ROOT_MODULES, modules


def test_every_sub_package_says_what_it_owns_and_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init.parent.name} has no docstring"
    for name in set(LAYER) - {"base", "commands"}:
        doc = ast.get_docstring(ast.parse((PACKAGE / name / "__init__.py").read_text()))
        assert "import" in doc, f"{name}'s docstring does not say what it may import"


def test_imports_run_one_way():
    assert violations_of_imports(PACKAGE) == []


@pytest.mark.parametrize(
    ("folder", "max_file"), [("src", MAX_FILE), ("benchmarks", MAX_BENCHMARK_FILE)]
)
def test_no_function_or_file_is_long_without_a_reason(folder, max_file):
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        found += [f"{path.relative_to(ROOT)}: {v}" for v in over_size(path, max_file)]
    assert found == []


def test_the_rules_catch_a_violation(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "__init__.py").write_text('"""Data."""\n')
    (tmp_path / "data" / "bad.py").write_text(
        "from imgrec.training import train\nfrom imgrec import cli\n"
    )
    assert sorted(violations_of_imports(tmp_path)) == [
        "imgrec.data.bad imports imgrec.cli",
        "imgrec.data.bad imports imgrec.training",
    ]
    long = tmp_path / "long.py"
    long.write_text("def f():\n" + "    x = 1\n" * 80 + "\n" * 400)
    assert over_size(long, MAX_FILE) == ["long.py has 481 lines", "long.py:f has 81 lines"]
    long.write_text("# size: a reason\n" + long.read_text())
    assert over_size(long, MAX_FILE) == []
