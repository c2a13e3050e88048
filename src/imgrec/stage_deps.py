"""Each stage's package-module deps in dvc.yaml, derived from the import graph.

DVC does not follow imports, so each stage lists the package modules its script imports,
directly or not. Kept by hand, such lists drift; this derives them from the code:

    python -m imgrec.stage_deps           # exit 1, naming each stage whose list differs
    python -m imgrec.stage_deps --write   # rewrite those lists in dvc.yaml, nothing else

CI runs the check. `--write` edits only the `src/imgrec/...` lines of each stage's `deps`,
so dvc.yaml stays the readable file people edit, comments and all.
"""

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

PACKAGE = "imgrec"


def _type_checking_only(tree: ast.AST) -> set[int]:
    """Nodes under `if TYPE_CHECKING:`: imports for annotations, never run."""
    return {
        id(sub)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for sub in ast.walk(node)
    }


def package_imports(path: Path) -> set[str]:
    """Package modules a file imports, at the top or inside functions (the package too)."""
    tree = ast.parse(path.read_text())
    skip, found = _type_checking_only(tree), set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(PACKAGE):
            found |= _with_parents(node.module)
            # `from imgrec.data import prepare` imports a module; a name that is no module
            # names no file, and derived_deps skips it
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE):
                    found |= _with_parents(alias.name)
    return found


def _with_parents(module: str) -> set[str]:
    """The module and each package above it: importing it runs their __init__ first."""
    parts = module.split(".")
    return {".".join(parts[: i + 1]) for i in range(len(parts))}


def module_file(root: Path, module: str) -> Path:
    """The file of a module, or a package's __init__.py."""
    folder = root / "src" / module.replace(".", "/")
    if (folder / "__init__.py").exists():
        return folder / "__init__.py"
    return folder.with_suffix(".py")


def derived_deps(root: Path, script: Path) -> list[str]:
    """The package files `script` runs, sorted, as dvc.yaml names them."""
    seen, todo = set(), list(package_imports(script))
    while todo:
        module = todo.pop()
        if module in seen or not module_file(root, module).exists():
            continue
        seen.add(module)
        todo += package_imports(module_file(root, module))
    return sorted(module_file(root, m).relative_to(root).as_posix() for m in seen)


def stale_stages(root: Path) -> dict[str, list[str]]:
    """{stage: its derived package deps} for every stage whose dvc.yaml list differs."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    stale = {}
    for name, stage in stages.items():
        listed = sorted(dep for dep in stage.get("deps", []) if dep.startswith("src/"))
        derived = derived_deps(root, root / "stages" / f"{name}.py")
        if listed != derived:
            stale[name] = derived
    return stale


_PACKAGE_DEP = re.compile(rf"^\s+- src/{PACKAGE}/\S+\.py\s*$")
_LIST_ITEM = re.compile(r"^(\s+)- ")


def rewrite(text: str, stale: dict[str, list[str]]) -> str:
    """dvc.yaml's text with each stale stage's package deps replaced by the derived ones, in
    place of its old ones (or at the end of its deps list, for a stage that had none);
    every other line as it was."""
    out, stage, in_deps, pending, indent = [], None, False, [], "      "
    for line in text.splitlines(keepends=True):
        item = _LIST_ITEM.match(line)
        if in_deps and not item:  # the deps list has ended: what is still due goes here
            out += [f"{indent}- {path}\n" for path in pending]
            in_deps, pending = False, []
        header = re.match(r"^  ([A-Za-z_][\w-]*):\s*$", line)
        if header:
            stage = header.group(1)
        elif stage in stale and re.match(r"^    deps:\s*$", line):
            in_deps, pending = True, list(stale[stage])
        elif in_deps and item:
            indent = item.group(1)
            if _PACKAGE_DEP.match(line):
                out += [f"{indent}- {path}\n" for path in pending]  # where the old ones began
                pending = []
                continue
        out.append(line)
    out += [f"{indent}- {path}\n" for path in pending]
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the stale lists")
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the folder of dvc.yaml")
    args = parser.parse_args(argv)
    stale = stale_stages(args.root)
    if not stale:
        print("dvc.yaml: every stage's deps match its imports")
        return 0
    if args.write:
        path = args.root / "dvc.yaml"
        path.write_text(rewrite(path.read_text(), stale))
        print(f"dvc.yaml: rewrote the deps of {', '.join(stale)}")
        return 0 if not stale_stages(args.root) else 1
    for name in stale:
        print(f"error: stage {name}: deps in dvc.yaml differ from its imports", file=sys.stderr)
    print("run `python -m imgrec.stage_deps --write` to derive them", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
