"""Did `dvc repro` reproduce the committed results? Bit for bit, or within declared tolerances.

    python -m imgrec.reproduction [--against HEAD] [--tolerances reproducibility.yaml]
                                  [--summary FILE]

The train stage writes the per-operation fingerprint of the kernels it ran with
(`imgrec.fingerprint`). Where it equals the committed run's, and the params are the
committed run's, every tracked output must come back byte for byte: this says so in
one line, and a changed byte fails the check, named (a real regression, not float
noise). Where the fingerprints differ (another CPU whose kernels give other bits, a
GPU, `kernels: native`), or where there is no fingerprint to compare and bits cannot
be promised (ARM, a GPU, native kernels), it names why, compares each metric of every
metrics file dvc.yaml declares with the committed value against the tolerance declared
for it, prints a Markdown table (also appended to `--summary`, e.g.
`$GITHUB_STEP_SUMMARY`), and fails only when a metric leaves its tolerance (or has
none declared) or an exact output (fetch's, prepare's) changed a byte.
"""

import argparse
import fnmatch
import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from imgrec import fingerprint
from imgrec.errors import EXIT_FAILED, ImgrecError
from imgrec.pipeline import kernels

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
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout
    except subprocess.CalledProcessError as error:
        raise ImgrecError(f"git {' '.join(args)}: {error.stderr.strip() or error}") from error


def _committed_json(revision: str, path: str) -> dict:
    try:
        return json.loads(_git("show", f"{revision}:./{path}"))
    except ImgrecError:
        return {}  # not committed at that revision: every metric in it is new


def _lock_hashes(lock_text: str) -> dict[str, str]:
    """{output path: md5} from a dvc.lock."""
    lock = yaml.safe_load(lock_text) or {}
    return {
        out["path"]: out.get("md5", "")
        for stage in lock.get("stages", {}).values()
        for out in stage.get("outs", [])
    }


def metrics_files(pipeline_path: str = "dvc.yaml") -> list[str]:
    """Every metrics file dvc.yaml declares, in its order."""
    pipeline = yaml.safe_load(Path(pipeline_path).read_text())
    return [
        next(iter(entry)) if isinstance(entry, dict) else entry
        for stage in pipeline["stages"].values()
        for entry in stage.get("metrics", [])
    ]


def read_tolerances(path: str) -> dict:
    """The declared tolerances, checked: one sentence on the first thing wrong."""
    try:
        declared = yaml.safe_load(Path(path).read_text())
        rules = {f"{name}:{key}": tol for name, keys in declared["metrics"].items()
                 for key, tol in keys.items()}  # fmt: skip
        list(declared["exact_outputs"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as error:
        raise ImgrecError(f"{path} must hold 'exact_outputs' and 'metrics' ({error}).") from error
    for where, tolerance in rules.items():
        number = isinstance(tolerance, int | float) and not isinstance(tolerance, bool)
        if tolerance not in ("exact", "free") and not (number and tolerance >= 0):
            raise ImgrecError(
                f"{path}: tolerance of {where} must be exact, free or a number >= 0, "
                f"got {tolerance!r}."
            )
    return declared


# Params that decide no output bit: when to save training's state, and where Dask runs
# (the outputs are the same bytes on any scheduler; tests compare them).
BIT_NEUTRAL_PARAMS = frozenset({"checkpoint_every", "dask_scheduler"})


def bits_expected(
    committed_params: dict | None = None,
    fingerprints: tuple[fingerprint.Fingerprint | None, fingerprint.Fingerprint | None] = (
        None,
        None,
    ),
) -> tuple[bool, str]:
    """Whether this machine and params.yaml promise bit-identical outputs, and why (not).

    Params other than the committed run's (`committed_params`) never do: another
    `num_threads` or `nproc` splits the float sums differently, and any other param
    trains another model; such a run is held to the declared tolerances. Then the
    kernels: where both the committed run and this one left their fingerprint
    (`fingerprints`: committed, reproduced), equal ones promise equal bits and differing
    ones name the operations; where either is missing, the machine decides as before
    fingerprints existed (x86-64, portable kernels, the CPU).
    """
    params = yaml.safe_load(Path("params.yaml").read_text()) or {}
    committed = params if committed_params is None else committed_params
    changed = sorted(
        key for key in params.keys() | committed.keys()
        if key not in BIT_NEUTRAL_PARAMS and params.get(key) != committed.get(key)
    )  # fmt: skip
    if changed:
        return False, f"other params than the committed run's ({', '.join(changed)})"
    committed_fingerprint, reproduced_fingerprint = fingerprints
    if committed_fingerprint is not None and reproduced_fingerprint is not None:
        roots, follow = reproduced_fingerprint.root(committed_fingerprint)
        if not roots:
            return True, "kernels whose fingerprint equals the committed run's"
        differing = roots + follow
        shown = ", ".join(differing[:12]) + (
            f" and {len(differing) - 12} more" if len(differing) > 12 else ""
        )
        devices = (
            committed_fingerprint.setup.get("device"),
            reproduced_fingerprint.setup.get("device"),
        )
        where = (
            f"a {devices[1]} device, the committed run a {devices[0]} one; "
            if devices[0] != devices[1]
            else ""
        )
        return False, (
            f"{where}kernels that differ from the committed run's at "
            f"{fingerprint.where(roots, follow)}: {len(differing)} operation(s), {shown}"
        )
    if not kernels.applies_here():
        return False, f"a {platform.machine()} CPU (portable kernels are x86-64 AVX2 ones)"
    if params.get("kernels", "portable") != "portable":
        return False, f"kernels: {params['kernels']}"
    device = str(params.get("device", "auto"))
    if device.startswith("cuda"):
        return False, "a CUDA GPU"
    if device == "auto":
        import torch

        if torch.cuda.is_available():
            return False, "a CUDA GPU (device: auto)"
    return True, "x86-64 with AVX2 or better, portable kernels, the CPU"


def _reproduced_fingerprint(path: str) -> fingerprint.Fingerprint | None:
    return fingerprint.load(path) if Path(path).exists() else None


def check(revision: str, tolerances_path: str) -> tuple[bool, str]:
    """(passed, report) for the working tree against `revision`."""
    try:
        _git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    except ImgrecError as error:
        raise ImgrecError(f"--against {revision!r} names no commit of this repository.") from error
    changed = sorted(
        line[3:]
        for line in _git("status", "--porcelain", "--untracked-files=all").splitlines()
        if line.strip()
    )
    if not changed:
        return True, f"reproduced bit for bit: every tracked output is identical to {revision}."

    declared = read_tolerances(tolerances_path)
    rows = []
    for name in metrics_files():
        reproduced = json.loads(Path(name).read_text()) if Path(name).exists() else {}
        rules = declared["metrics"].get(name, {})  # none declared: every metric in it fails
        rows += compare(_committed_json(revision, name), reproduced, rules, name)
    old_lock = _lock_hashes(_git("show", f"{revision}:./dvc.lock"))
    new_lock = _lock_hashes(Path("dvc.lock").read_text())
    moved = [p for p in declared["exact_outputs"] if old_lock.get(p) != new_lock.get(p)]

    path = declared.get("kernel_fingerprint")
    fingerprints = (
        (fingerprint.committed(path, revision), _reproduced_fingerprint(path))
        if path
        else (None, None)
    )
    committed_params = yaml.safe_load(_git("show", f"{revision}:./params.yaml"))
    strict, why = bits_expected(committed_params, fingerprints)
    within = all(row.ok for row in rows) and not moved
    passed = within and not strict
    shown = [row for row in rows if not row.ok or row.committed != row.reproduced]
    listed = f"{', '.join(changed[:8])}{', ...' if len(changed) > 8 else ''}"
    if strict:
        verdict = "FAILED: not bit-identical"
        reading = (
            f"Bits must match here ({why}): every tracked output must come back byte for byte, but "
            f"{len(changed)} tracked file(s) differ ({listed}). The metrics, for reference:"
        )
    else:
        verdict = "within tolerance" if passed else "FAILED"
        reading = (
            f"Bits cannot be expected to match ({why}): {len(changed)} tracked file(s) differ "
            f"({listed}), so metrics are compared with the tolerances in {tolerances_path}."
        )
    lines = [
        f"## Reproduction against {revision}: {verdict}",
        "",
        reading,
        "",
        markdown_table(shown) if shown else "Every metric is identical to the committed run.",
        "",
        f"{len(rows) - len(shown)} more metric(s) identical to the committed run." if shown else "",
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
    try:
        passed, report = check(args.against, args.tolerances)
    except ImgrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FAILED
    print(report)
    if args.summary:
        with open(args.summary, "a") as summary:
            summary.write(report + "\n")
    return 0 if passed else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
