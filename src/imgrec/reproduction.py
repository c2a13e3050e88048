"""Did `dvc repro` reproduce the committed results? Bit for bit, or within declared tolerances.

    python -m imgrec.reproduction [--against HEAD] [--tolerances reproducibility.yaml]
                                  [--summary FILE]

On x86-64 with portable kernels a fresh run rewrites every tracked output
byte for byte, and this says so in one line. Where bits cannot match (ARM, a
GPU, `kernels: native`) it compares each metric with the committed value
against the tolerance declared for it, prints a Markdown table (also appended
to `--summary`, e.g. `$GITHUB_STEP_SUMMARY`), and fails only when a metric
leaves its tolerance or an exact output (fetch's, prepare's) changed a byte.
"""

import argparse
import fnmatch
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

TOLERANCES_FILE = "reproducibility.yaml"


@dataclass(frozen=True)
class Row:
    metric: str  # file:dotted.key
    committed: object
    reproduced: object
    tolerance: object  # "exact", "free", an absolute difference, or None (none declared)

    @property
    def difference(self) -> float | None:
        numbers = (self.committed, self.reproduced)
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in numbers):
            return float(self.reproduced) - float(self.committed)
        return None

    @property
    def verdict(self) -> str:
        if self.tolerance is None:
            return "FAIL: no tolerance declared"
        if self.tolerance == "free" or self.committed == self.reproduced:
            return "ok"
        if self.tolerance == "exact" or self.difference is None:
            return "FAIL: must be equal"
        return "ok" if abs(self.difference) <= float(self.tolerance) else "FAIL: out of tolerance"

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


def flatten(data: object, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}: one entry per leaf metric."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat = {}
    for key, value in data.items():
        flat |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return flat


def tolerance_for(key: str, rules: dict[str, object]) -> object:
    """The first rule whose pattern (`*` matches within and across dots) matches the key."""
    return next((tol for pattern, tol in rules.items() if fnmatch.fnmatchcase(key, pattern)), None)


def compare(committed: dict, reproduced: dict, rules: dict[str, object], name: str) -> list[Row]:
    """One row per metric in either version of one metrics file."""
    old, new = flatten(committed), flatten(reproduced)
    return [
        Row(f"{name}:{key}", old.get(key), new.get(key), tolerance_for(key, rules))
        for key in sorted(old.keys() | new.keys())
    ]


def markdown_table(rows: list[Row]) -> str:
    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.6g}"
        return "—" if value is None else str(value)

    lines = [
        "| metric | committed | reproduced | difference | tolerance | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        difference = "" if row.difference is None else f"{row.difference:+.3g}"
        lines.append(
            f"| {row.metric} | {cell(row.committed)} | {cell(row.reproduced)} | {difference} "
            f"| {cell(row.tolerance)} | {row.verdict} |"
        )
    return "\n".join(lines)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def _committed_json(revision: str, path: str) -> dict:
    try:
        return json.loads(_git("show", f"{revision}:{path}"))
    except subprocess.CalledProcessError:
        return {}  # not committed at that revision: every metric in it is new


def _lock_hashes(lock_text: str) -> dict[str, str]:
    """{output path: md5} from a dvc.lock."""
    lock = yaml.safe_load(lock_text) or {}
    return {
        out["path"]: out.get("md5", "")
        for stage in lock.get("stages", {}).values()
        for out in stage.get("outs", [])
    }


def check(revision: str, tolerances_path: str) -> tuple[bool, str]:
    """(passed, report) for the working tree against `revision`."""
    changed = sorted(
        line[3:]
        for line in _git("status", "--porcelain", "--untracked-files=all").splitlines()
        if line.strip()
    )
    if not changed:
        return True, f"reproduced bit for bit: every tracked output is identical to {revision}."

    declared = yaml.safe_load(Path(tolerances_path).read_text())
    rows = []
    for name, rules in declared["metrics"].items():
        reproduced = json.loads(Path(name).read_text()) if Path(name).exists() else {}
        rows += compare(_committed_json(revision, name), reproduced, rules, name)
    old_lock = _lock_hashes(_git("show", f"{revision}:dvc.lock"))
    new_lock = _lock_hashes(Path("dvc.lock").read_text())
    moved = [p for p in declared["exact_outputs"] if old_lock.get(p) != new_lock.get(p)]

    passed = all(row.ok for row in rows) and not moved
    shown = [row for row in rows if not row.ok or row.committed != row.reproduced]
    lines = [
        f"## Reproduction against {revision}: {'within tolerance' if passed else 'FAILED'}",
        "",
        f"Not bit-identical: {len(changed)} tracked file(s) differ ({', '.join(changed[:8])}"
        f"{', ...' if len(changed) > 8 else ''}), so metrics are compared with the "
        f"tolerances in {tolerances_path}.",
        "",
        markdown_table(shown),
        "",
        f"{len(rows) - len(shown)} more metric(s) identical to the committed run.",
        "",
    ]
    for path in declared["exact_outputs"]:
        state = "CHANGED (must be byte-identical)" if path in moved else "byte-identical"
        lines.append(f"- exact output `{path}`: {state}")
    return passed, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imgrec.reproduction", description=__doc__)
    parser.add_argument("--against", default="HEAD", help="git revision of the committed run")
    parser.add_argument("--tolerances", default=TOLERANCES_FILE, help="declared tolerances")
    parser.add_argument("--summary", help="also append the report to this file")
    args = parser.parse_args(argv)
    passed, report = check(args.against, args.tolerances)
    print(report)
    if args.summary:
        with open(args.summary, "a") as summary:
            summary.write(report + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
