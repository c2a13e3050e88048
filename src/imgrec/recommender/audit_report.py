"""The catalog audit's report (reports/audit.json): what the audit stage found, by row id.

    {"duplicates": [{"row_ids": [..], "kind": "exact" | "near", "similarity": s}],
     "leaks": [{"train_row_id": a, "val_row_id": b, "similarity": s}],
     "suspect_labels": [{"row_id": r, "label": "...", "suggested": "...", "score": s}],
     "outliers": [{"row_id": r, "score": s}],
     "thresholds": {name: value, ...}}

Duplicate groups are disjoint and each lists its row ids ascending; suspects and outliers
come most suspect first. `thresholds` says where each list was cut and how that cut was
calibrated (`audit`). Written by `save_report`, read by `load_report`.
"""

import os
from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

import numpy as np

from imgrec.errors import ImgrecError, MissingOutput
from imgrec.files import read_json, write_json


@dataclass(frozen=True)
class DuplicateGroup:
    row_ids: tuple[int, ...]  # ascending, at least two
    kind: Literal["exact", "near"]  # exact: the same decoded pixels
    similarity: float  # the group's weakest link: 1.0 for exact, else a cosine


@dataclass(frozen=True)
class Leak:
    train_row_id: int
    val_row_id: int
    similarity: float  # embedding cosine


@dataclass(frozen=True)
class SuspectLabel:
    row_id: int
    label: str
    suggested: str
    score: float  # 0..1: the similarity-weighted share of neighbours with another label


@dataclass(frozen=True)
class Outlier:
    row_id: int
    score: float  # 0..1: 1 - mean cosine to the nearest neighbours


@dataclass(frozen=True)
class ItemFlags:
    """What the audit says about one catalog item (empty when it said nothing)."""

    duplicates: tuple[int, ...] = ()  # the other row ids of its duplicate group
    duplicate_kind: str | None = None
    leaks_with: tuple[int, ...] = ()  # row ids on the other side of the split alike to it
    suspect_label: SuspectLabel | None = None
    outlier_score: float | None = None


Flag = Literal["suspect_label", "duplicate", "outlier", "leak"]  # what the audit says of an item
FLAGS: tuple[Flag, ...] = get_args(Flag)


@dataclass(frozen=True)
class AuditReport:
    duplicates: list[DuplicateGroup] = field(default_factory=list)
    leaks: list[Leak] = field(default_factory=list)
    suspect_labels: list[SuspectLabel] = field(default_factory=list)
    outliers: list[Outlier] = field(default_factory=list)
    thresholds: dict[str, float | str] = field(default_factory=dict)

    def duplicate_groups(self, row_ids: np.ndarray) -> np.ndarray:
        """(N,) int64 for the given (sorted) catalog row ids: equal values are one
        duplicate group; an item in no group gets its own value."""
        groups = np.arange(len(row_ids), dtype=np.int64)
        if not len(row_ids):
            return groups
        for group in self.duplicates:
            ids = np.asarray(group.row_ids, dtype=np.int64)
            members = np.searchsorted(row_ids, ids).clip(max=len(row_ids) - 1)
            members = members[row_ids[members] == ids]  # those in this catalog
            groups[members] = members.min(initial=len(row_ids))
        return groups

    def flagged_rows(self) -> dict[Flag, list[int]]:
        """The row ids the audit flags, by kind of finding (in FLAGS' order), each once, in
        the report's order: what the server filters on and the catalog map marks."""
        found = {
            "suspect_label": [suspect.row_id for suspect in self.suspect_labels],
            "duplicate": [row_id for group in self.duplicates for row_id in group.row_ids],
            "outlier": [outlier.row_id for outlier in self.outliers],
            "leak": [row for leak in self.leaks for row in (leak.train_row_id, leak.val_row_id)],
        }
        return {flag: list(dict.fromkeys(found[flag])) for flag in FLAGS}  # an item may leak twice

    def flags(self, row_id: int) -> ItemFlags:
        group = next((g for g in self.duplicates if row_id in g.row_ids), None)
        leaks = [leak.val_row_id for leak in self.leaks if leak.train_row_id == row_id]
        leaks += [leak.train_row_id for leak in self.leaks if leak.val_row_id == row_id]
        outlier = next((o.score for o in self.outliers if o.row_id == row_id), None)
        return ItemFlags(
            duplicates=tuple(r for r in group.row_ids if r != row_id) if group else (),
            duplicate_kind=group.kind if group else None,
            leaks_with=tuple(sorted(leaks)),
            suspect_label=next((s for s in self.suspect_labels if s.row_id == row_id), None),
            outlier_score=outlier,
        )


def save_report(path: str | os.PathLike, report: AuditReport) -> None:
    write_json(path, asdict(report))


def load_report(path: str | os.PathLike) -> AuditReport:
    if not os.path.exists(path):
        raise MissingOutput(f"no audit report at {path}; run `dvc repro` to make it.")
    try:
        data = read_json(path)
        return AuditReport(
            duplicates=[
                DuplicateGroup(tuple(int(r) for r in g["row_ids"]), g["kind"], g["similarity"])
                for g in data["duplicates"]
            ],
            leaks=[Leak(**leak) for leak in data["leaks"]],
            suspect_labels=[SuspectLabel(**s) for s in data["suspect_labels"]],
            outliers=[Outlier(**o) for o in data["outliers"]],
            thresholds=data.get("thresholds", {}),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ImgrecError(
            f"the audit report {path} is unreadable or from an older imgrec ({error}); "
            "run `dvc repro` to remake it."
        ) from error
