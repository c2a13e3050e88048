"""dvc.lock held to the code and params it claims to record.

    python -m imgrec.pipeline.lock   # exit 1, naming each source file or param changed since

A source file or param edited after the last `dvc repro` leaves dvc.lock stale, and CI's
reproduction then fails on that one file after half an hour. CI runs this in its lint step,
where it fails in a second. No stage imports it, so it is no stage's dep.
"""

import argparse
import hashlib
import sys
from pathlib import Path

import yaml


def stale_entries(root: Path) -> list[str]:
    """What dvc.lock recorded that the files no longer say: "stage: path" for each source dep
    (a file no stage writes) whose md5 differs, "stage: param name" for each changed param."""
    stages = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    written = {out["path"] for stage in stages.values() for out in stage.get("outs", [])}
    params = yaml.safe_load((root / "params.yaml").read_text())
    stale = []
    for name, stage in stages.items():
        for dep in stage.get("deps", []):
            path = root / dep["path"]
            if dep["path"] in written or not path.is_file():
                continue  # an output (absent from a fresh clone) or a folder: `dvc status`'s
            if hashlib.md5(path.read_bytes()).hexdigest() != dep["md5"]:
                stale.append(f"{name}: {dep['path']}")
        for param, value in stage.get("params", {}).get("params.yaml", {}).items():
            if params.get(param) != value:
                stale.append(f"{name}: param {param}")
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the folder of dvc.lock")
    stale = stale_entries(parser.parse_args(argv).root)
    for entry in stale:
        print(f"error: dvc.lock is stale: {entry} changed since it was locked", file=sys.stderr)
    if stale:
        print("run `dvc repro` and commit dvc.lock with what it reproduced", file=sys.stderr)
        return 1
    print("dvc.lock: records the code and params here")
    return 0


if __name__ == "__main__":
    sys.exit(main())
