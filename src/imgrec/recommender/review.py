"""The review loop's decisions: the audit's findings turned into corrections.

What `python -m imgrec review` and the server's review endpoint both call: each builds
`Correction`s here from the audit's report and the catalog's labels, and records them with
`corrections.update` (labels/corrections.csv), which prepare applies on the next `dvc repro`.

Corrections name rows of the training data. The audit's report names the catalog's rows,
which are the training data's only when the catalog is the training data (`catalog_source`
empty, the default); `Review.load` refuses a catalog apart from it rather than write row ids
of one file as decisions about another.
"""

import os
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from imgrec.data.corrections import Correction
from imgrec.data.prepared import Prepared, label_name, load_prepared
from imgrec.errors import ImgrecError
from imgrec.recommender.audit_report import AuditReport, DuplicateGroup, SuspectLabel, load_report


@dataclass(frozen=True)
class Review:
    report: AuditReport
    prepared: Prepared  # the catalog's prepared data: row ids, labels, class names

    @classmethod
    def load(
        cls,
        report_path: str | os.PathLike,
        prepared_dir: str | os.PathLike,
        report: AuditReport | None = None,
    ) -> "Review":
        """The review of the prepared data in `prepared_dir` (its labels only: no image is
        read or mapped) by the audit's report (`report`, or the one at `report_path`)."""
        prepared = load_prepared(prepared_dir, images=False)
        if not len(prepared.train_index) + len(prepared.val_index):
            raise ImgrecError(
                "the catalog is apart from the training data (param catalog_source is set): "
                "the audit names the catalog's rows, but corrections apply to the training "
                "data's; review with catalog_source empty."
            )
        return cls(load_report(report_path) if report is None else report, prepared)

    def label_of(self, row_id: int) -> str:
        """The row's class name now ("" when unlabeled); one sentence if it is not there."""
        position = int(self.prepared.positions(np.array([row_id]))[0])
        if position >= len(self.prepared.row_ids) or self.prepared.row_ids[position] != row_id:
            raise ImgrecError(f"row {row_id} is not in the catalog (or a correction dropped it).")
        return label_name(self.prepared.class_names, int(self.prepared.labels[position])) or ""

    def suspect(self, row_id: int) -> SuspectLabel:
        found = next((s for s in self.report.suspect_labels if s.row_id == row_id), None)
        if found is None:
            raise ImgrecError(f"the audit found no suspect label at row {row_id}.")
        return found

    def group(self, row_id: int) -> DuplicateGroup:
        found = next((g for g in self.report.duplicates if row_id in g.row_ids), None)
        if found is None:
            raise ImgrecError(f"row {row_id} is in no duplicate group the audit found.")
        return found

    def accept(self, row_id: int) -> Correction:
        """The audit's suggested label for a suspect row."""
        suspect = self.suspect(row_id)
        return Correction(row_id, suspect.label, "relabel", suspect.suggested)

    def accept_all(self, decided: Collection[int] = frozenset()) -> list[Correction]:
        """Every suggestion not decided yet (rows in `decided` keep their decision)."""
        return [
            self.accept(s.row_id) for s in self.report.suspect_labels if s.row_id not in decided
        ]

    def relabel(self, row_id: int, label: str) -> Correction:
        if label not in self.prepared.class_names:
            raise ImgrecError(
                f"{label!r} is not a class; the classes are {', '.join(self.prepared.class_names)}."
            )
        return Correction(row_id, self.label_of(row_id), "relabel", label)

    def drop(self, row_id: int) -> Correction:
        return Correction(row_id, self.label_of(row_id), "drop")

    def keep(self, row_id: int) -> Correction:
        return Correction(row_id, self.label_of(row_id), "keep")

    def keep_one(self, row_id: int, keep: int | None = None) -> list[Correction]:
        """Drop every member of `row_id`'s duplicate group but `keep` (default: its first
        row); the kept one is recorded as reviewed."""
        members = self.group(row_id).row_ids
        keep = members[0] if keep is None else keep
        if keep not in members:
            raise ImgrecError(f"row {keep} is not in the duplicate group of row {row_id}.")
        present = [r for r in members if r in self._row_set]  # a dropped one is gone already
        return [self.keep(r) if r == keep else self.drop(r) for r in present]

    @property
    def _row_set(self) -> set[int]:
        return set(self.prepared.row_ids.tolist())
