"""Reviewed label corrections (labels/corrections.csv): a person's decisions about the
training data's items, kept in git and applied by prepare.

    row_id,label_seen,decision,new_label
    17,3,relabel,8
    240,5,drop,
    311,1,keep,

One line per reviewed item, sorted by row_id (the row of the item in the fetched parquet,
as the audit's report and the prepared data name it), LF line endings, so a review is a
readable diff. `label_seen` is the item's class name in the source when the decision was
made (empty: unlabeled); a correction whose item no longer carries that label is skipped,
not applied to a different picture of the data. Decisions:
  relabel  the item's label becomes `new_label` (a class name)
  drop     the item leaves the dataset (e.g. all but one of a duplicate group)
  keep     reviewed and left as it is (so the review does not ask again)

A missing file is no corrections. Written by `save` (atomically), read by `load`; the
server's review endpoint and `python -m imgrec review` both change it through `update`.
"""

import contextlib
import csv
import io
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

from imgrec.errors import ImgrecError
from imgrec.files import atomic_file

log = logging.getLogger(__name__)

HEADER = ("row_id", "label_seen", "decision", "new_label")
Decision = Literal["relabel", "drop", "keep"]
DECISIONS: tuple[str, ...] = get_args(Decision)
# Decisions that change the data; `keep` only records that the item was reviewed.
CHANGES = ("relabel", "drop")


@dataclass(frozen=True)
class Correction:
    row_id: int
    label_seen: str  # the item's class name when reviewed; "" for an unlabeled item
    decision: Decision
    new_label: str = ""  # the class name a relabel gives; empty for drop and keep

    def __post_init__(self) -> None:
        if isinstance(self.row_id, bool) or not isinstance(self.row_id, int) or self.row_id < 0:
            raise ImgrecError(
                f"a correction's row_id must be an integer >= 0, got {self.row_id!r}."
            )
        if self.decision not in DECISIONS:
            raise ImgrecError(
                f"row {self.row_id}: decision must be one of {', '.join(DECISIONS)}, "
                f"got {self.decision!r}."
            )
        if (self.decision == "relabel") != bool(self.new_label):
            raise ImgrecError(
                f"row {self.row_id}: a relabel needs a new_label and only a relabel has one "
                f"(decision {self.decision!r}, new_label {self.new_label!r})."
            )
        if self.decision == "relabel" and self.new_label == self.label_seen:
            raise ImgrecError(f"row {self.row_id}: relabel to its own label; the decision is keep.")
        for text in (self.label_seen, self.new_label):
            if not isinstance(text, str) or "\n" in text or "\r" in text:
                raise ImgrecError(f"row {self.row_id}: a label must be one line of text.")


def load(path: str | os.PathLike) -> list[Correction]:
    """The corrections in `path`, sorted by row id; none when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ImgrecError(f"cannot read the corrections file {path} ({error}).") from error
    return parse(text, str(path))


def parse(text: str, name: str = "corrections") -> list[Correction]:
    """Corrections from the CSV text of a corrections file (`name` says where, in errors)."""
    rows = csv.reader(io.StringIO(text, newline=""))
    header = next(rows, None)
    if header is None:
        return []
    if tuple(header) != HEADER:
        raise ImgrecError(f"{name}: the first line must be `{','.join(HEADER)}`, got {header}.")
    found: dict[int, Correction] = {}
    for line, row in enumerate(rows, start=2):
        if not row:
            continue  # a blank line (an editor's trailing newline) says nothing
        if len(row) != len(HEADER):
            raise ImgrecError(f"{name} line {line}: expected {len(HEADER)} fields, got {row}.")
        row_id, label_seen, decision, new_label = row
        try:
            number = int(row_id)
        except ValueError:
            raise ImgrecError(f"{name} line {line}: row_id {row_id!r} is no integer.") from None
        try:
            correction = Correction(number, label_seen, decision, new_label)
        except ImgrecError as error:
            raise ImgrecError(f"{name} line {line}: {error}") from None
        if number in found:
            raise ImgrecError(f"{name} line {line}: row {number} has a decision already.")
        found[number] = correction
    return [found[row_id] for row_id in sorted(found)]


def dumps(corrections: Iterable[Correction]) -> str:
    """The file's text: the header, then one line per correction by row id, LF endings."""
    by_row = {}
    for correction in corrections:
        if correction.row_id in by_row and by_row[correction.row_id] != correction:
            raise ImgrecError(f"two different decisions for row {correction.row_id}.")
        by_row[correction.row_id] = correction
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADER)
    for row_id in sorted(by_row):
        c = by_row[row_id]
        writer.writerow((c.row_id, c.label_seen, c.decision, c.new_label))
    return buffer.getvalue()


def save(path: str | os.PathLike, corrections: Iterable[Correction]) -> None:
    """Write `corrections` atomically: a reader sees the old file or the new, never half."""
    text = dumps(corrections)
    with atomic_file(path) as tmp:
        tmp.write_bytes(text.encode("utf-8"))


def merge(
    existing: Iterable[Correction],
    decisions: Iterable[Correction] = (),
    forget: Iterable[int] = (),
) -> list[Correction]:
    """`existing` with each of `decisions` upserted by row id (the later decision wins) and
    the rows in `forget` removed (undecided again), sorted by row id.

    A row decided before keeps its first `label_seen`: that is the label the source holds.
    A reviewer who sees the item again sees it after prepare applied the first decision
    (e.g. already relabelled), and the file must still match the source.
    """
    by_row = {c.row_id: c for c in existing}
    for correction in decisions:
        earlier = by_row.get(correction.row_id)
        if earlier is not None and correction.label_seen != earlier.label_seen:
            seen = earlier.label_seen
            if correction.decision == "relabel" and correction.new_label == seen:
                # back to the source's label (3 -> 8 applied, then 8 -> 3): reviewed, kept
                correction = Correction(correction.row_id, seen, "keep")
            else:
                correction = replace(correction, label_seen=seen)
        by_row[correction.row_id] = correction
    for row_id in forget:
        by_row.pop(row_id, None)
    return [by_row[row_id] for row_id in sorted(by_row)]


_lock = threading.Lock()  # writers in this process (the server's request threads)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-merge-write against this process's threads and other processes (the
    server and a CLI command at once): an flock on the file's folder, where there is one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _lock:
        try:
            import fcntl
        except ImportError:  # Windows: the thread lock alone
            yield
            return
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            fcntl.flock(folder, fcntl.LOCK_EX)
            yield
        finally:
            os.close(folder)  # closing releases the lock


def update(
    path: str | os.PathLike,
    decisions: Iterable[Correction] = (),
    forget: Iterable[int] = (),
) -> list[Correction]:
    """Upsert `decisions` and remove `forget` in the file at `path` (made if missing), under a
    lock, atomically; return the file's corrections after the change."""
    path = Path(path)
    decisions, forget = list(decisions), list(forget)
    with _locked(path):
        merged = merge(load(path), decisions, forget)
        save(path, merged)
    log.info("%s: %d decision(s) recorded, %d forgotten; %d in all",
             path, len(decisions), len(forget), len(merged))  # fmt: skip
    return merged


@dataclass
class Plan:
    """What applying corrections to a dataset does, by position in its rows."""

    relabel: dict[int, str] = field(default_factory=dict)  # position -> new class name
    drop: list[int] = field(default_factory=list)  # positions, ascending
    counts: Counter = field(default_factory=Counter)  # relabel, drop, keep, skipped
    skipped: list[str] = field(default_factory=list)  # one sentence per skipped correction

    @property
    def applied(self) -> int:
        return self.counts["relabel"] + self.counts["drop"]


def plan(
    corrections: Sequence[Correction],
    row_ids: Sequence[int],
    labels: Sequence[str],
    classes: Sequence[str],
) -> Plan:
    """Which of `corrections` apply to the rows `row_ids` whose class names are `labels`
    ("" for unlabeled), given the dataset's `classes`. A correction for a row that is not
    there, whose label changed since review, or that names no class is skipped: counted
    and said in one line, never applied to something else."""
    position = {int(row_id): i for i, row_id in enumerate(row_ids)}
    known = set(classes)
    result = Plan()
    for c in corrections:
        where = position.get(c.row_id)
        if where is None:
            reason = "no such row in the data (fetched with other rows, or skipped)"
        elif labels[where] != c.label_seen:
            reason = f"its label is now {labels[where]!r}, not the {c.label_seen!r} reviewed"
        elif c.decision == "relabel" and c.new_label not in known:
            reason = f"{c.new_label!r} is not a class of the data"
        else:
            reason = None
        if reason is not None:
            result.counts["skipped"] += 1
            result.skipped.append(f"correction {c.decision} of row {c.row_id} skipped: {reason}")
            continue
        result.counts[c.decision] += 1
        if c.decision == "relabel":
            result.relabel[where] = c.new_label
        elif c.decision == "drop":
            result.drop.append(where)
    result.drop.sort()
    for line in result.skipped:
        log.warning("%s", line)
    return result
