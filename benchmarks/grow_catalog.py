"""A catalog that grows: `dvc repro` after rows are appended to the catalog's source, beside
the catalog's stages run from scratch, in a copy of the project with real DVC.

The training data is the first `--train-rows` rows of the benchmark catalog (trained one
epoch: the catalog stages' cost does not depend on how well the model is trained); the
catalog (`catalog_source`) is a folder holding the benchmark catalog's `--rows` rows, to which
`--append` rows (`make_catalog.py` with another seed) are then added as new files. Steps:

1. build: `dvc repro` of everything;
2. unchanged: `dvc repro` again (what fetch_catalog's check costs);
3. append: the new files added, `dvc repro`;
4. from scratch: the kept vectors deleted, `dvc repro --force --single-item` of embed,
   audit and recommend: the same catalog embedded whole.

Prints each step's stages with their wall seconds, what embed said, and whether
data/embeddings and data/recommendations.parquet of steps 3 and 4 are the same bytes.

    python benchmarks/grow_catalog.py --work-dir DIR [--data-dir DIR] [--smoke]
"""

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SIZES = {  # name: (full run, --smoke, help)
    "rows": (40000, 300, "catalog rows before the append"),
    "append": (400, 30, "rows appended"),
    "train_rows": (2000, 200, "training rows (the benchmark catalog's first)"),
    "img_size": (128, 32, "img_size"),
}
COMPARED = ("data/embeddings", "data/recommendations.parquet")


def dvc(project: Path, *args: str) -> list[tuple[str, float, str]]:
    """Run dvc; (stage, wall s, its output) for every stage it ran, in order."""
    env = os.environ | {
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
        "PYTHONPATH": str(project / "src"),
    }
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("dvc")), *args], cwd=project, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    stages, current, started, lines = [], None, time.perf_counter(), []
    for line in process.stdout:
        match = re.match(r"Running stage '(\w+)'", line)
        if match or line.startswith(("Updating lock file", "Use `dvc push`")):
            if current:
                stages.append((current, time.perf_counter() - started, "".join(lines)))
            current, started, lines = (match[1] if match else None), time.perf_counter(), []
        lines.append(line)
    if process.wait():
        sys.exit(f"dvc {' '.join(args)} failed:\n{''.join(lines)}")
    if current:
        stages.append((current, time.perf_counter() - started, "".join(lines)))
    return stages


def digest(project: Path) -> str:
    md5 = hashlib.md5()
    for name in COMPARED:
        target = project / name
        for file in sorted([target] if target.is_file() else target.rglob("*")):
            md5.update(file.relative_to(project).as_posix().encode())
            md5.update(file.read_bytes())
    return md5.hexdigest()


def report(step: str, stages: list, wall: float) -> None:
    print(f"\n#### {step}: {wall:.1f} s wall\n")
    print("| stage | wall s | it said |\n|---|---|---|")
    for name, seconds, output in stages:
        said = [line for line in output.splitlines() if line.startswith(("embedded", "catalog:"))]
        print(f"| {name} | {seconds:.1f} | {'; '.join(said)} |")


def project_copy(folder: Path, params: dict) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, folder / name)
    for name in ("stages", "src", "labels"):  # labels: the corrections file prepare reads
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    (folder / "params.yaml").write_text(yaml.safe_dump(base | params, sort_keys=False))
    dvc(folder, "init", "--no-scm", "-q")
    shutil.copytree(ROOT / ".dvc" / "plots", folder / ".dvc" / "plots")


def timed(project: Path, *args: str) -> tuple[list, float]:
    started = time.perf_counter()
    stages = dvc(project, *args)
    return stages, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--data-dir", type=Path, help="where the benchmark catalogs are kept")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, for CI")
    for name, (full, smoke, help_) in SIZES.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, help=f"{help_} "
                            f"(default {full}; --smoke: {smoke})")  # fmt: skip
    args = parser.parse_args()
    sizes = {n: getattr(args, n) or (s if args.smoke else f) for n, (f, s, _) in SIZES.items()}
    sys.path.insert(0, str(HERE))
    import make_catalog

    data = args.data_dir or args.work_dir / "data"
    base, extra = data / f"catalog-{sizes['rows']}", data / f"append-{sizes['append']}-seed1"
    for folder, rows, seed in ((base, sizes["rows"], 0), (extra, sizes["append"], 1)):
        if not make_catalog.catalog_is_ready(folder, rows, seed):
            print(f"making {folder} ...", flush=True)
            make_catalog.make_catalog(folder, rows, seed)
    work = args.work_dir.resolve()
    catalog = work / "catalog"  # the catalog's source: links to the base files, then more
    shutil.rmtree(catalog, ignore_errors=True)
    catalog.mkdir(parents=True)
    for file in sorted(base.glob("*.parquet")):
        (catalog / file.name).symlink_to(file.resolve())
    project = work / "project"
    project_copy(project, {
        "source": str(base.resolve()), "rows": sizes["train_rows"], "epochs": 1,
        "img_size": sizes["img_size"], "catalog_source": str(catalog),
        "catalog_rows": 10 * (sizes["rows"] + sizes["append"]), "device": "cpu",
        # --smoke: one thread, as run.py's smoke run (the test suite runs two side by side).
        **({"num_threads": 1} if args.smoke else {}),
    })  # fmt: skip
    print(f"catalog {sizes['rows']} rows + {sizes['append']} appended; training rows "
          f"{sizes['train_rows']}, 1 epoch; img_size {sizes['img_size']}")  # fmt: skip
    report("1. build", *timed(project, "repro"))
    report("2. unchanged", *timed(project, "repro"))
    for file in sorted(extra.glob("*.parquet")):
        (catalog / f"append-{file.name}").symlink_to(file.resolve())
    report("3. append", *timed(project, "repro"))
    grown = digest(project)
    shutil.rmtree(project / ".imgrec" / "vectors")
    rerun = ("embed", "audit", "recommend")
    ran = timed(project, "repro", "--force", "--single-item", *rerun)
    report(f"4. from scratch ({', '.join(rerun)})", *ran)
    same = "yes" if digest(project) == grown else "NO"
    print(f"\n{', '.join(COMPARED)} after the append, byte-identical to from scratch: {same}")


if __name__ == "__main__":
    main()
