"""The served state: the pipeline's outputs one worker answers from, loaded once."""

import io
import threading
from dataclasses import dataclass, field
from typing import Literal, Self, get_args

import numpy as np
from fastapi import Request
from PIL import Image

from imgrec.audit_report import AuditReport, load_report
from imgrec.errors import ImgrecError, MissingOutput
from imgrec.query import Recommender, decode_image
from imgrec.recommendations import Recommendations, load_recommendations
from imgrec.server.config import ServeConfig

Flag = Literal["suspect_label", "duplicate", "outlier", "leak"]  # what the audit says of an item
FLAGS = get_args(Flag)


@dataclass
class Served:
    """The outputs one worker serves, loaded once, with what the catalog page filters on."""

    recommender: Recommender
    recommendations: Recommendations
    audit: AuditReport | None
    model_name: str
    # (N,) "train" or "val", the split of the training data an item is in; None for every
    # item of a catalog apart from the training data (it has no split).
    splits: np.ndarray
    flags: dict[int, list[str]]  # row id -> what the audit says of it; empty without one
    # One query at a time per worker: see `imgrec.server`'s docstring.
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, config: ServeConfig) -> Self:
        """Everything, or one ImgrecError on what is missing or out of step."""
        recommender = Recommender.load(
            config.model, config.catalog, config.prepared, config.device,
            audit=config.audit, hashes=config.hashes,
        )  # fmt: skip
        if not config.recommendations.exists():
            raise MissingOutput(
                f"no recommendations at {config.recommendations}; run `dvc repro` to make them."
            )
        recommendations = load_recommendations(config.recommendations)
        if not np.array_equal(recommendations.row_ids, recommender.catalog.row_ids):
            raise ImgrecError(
                f"the recommendations in {config.recommendations} are not of the catalog in "
                f"{config.catalog}; run `dvc repro` to bring them in step."
            )
        known = config.audit is not None and config.audit.exists()
        audit = load_report(config.audit) if known else None
        catalog = recommender.catalog
        _ = catalog.embedding_index, catalog.appearance_index  # fitted now, not in a request
        splits = np.full(len(catalog.row_ids), None, dtype=object)
        if len(catalog.val_index):
            splits[:] = "train"
            splits[catalog.val_index] = "val"
        flags = _item_flags(audit)
        return cls(recommender, recommendations, audit, config.model_name, splits, flags)

    @property
    def catalog_size(self) -> int:
        return len(self.recommender.catalog.row_ids)

    def describe(self) -> str:
        audit = "with" if self.audit is not None else "without"
        collapsed = "collapsed" if self.recommender.duplicates is not None else "not collapsed"
        return (
            f"serving {self.catalog_size} catalog items with {self.model_name} "
            f"(md5 {self.recommender.catalog.model_md5}), {audit} an audit report, "
            f"duplicates {collapsed}"
        )

    def image_png(self, position: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(self.recommender.catalog.images[position]).save(buffer, format="PNG")
        return buffer.getvalue()

    def decode(self, data: bytes, name: str | None) -> np.ndarray:
        """(1, S, S, 3) uint8: the upload decoded as the CLI decodes a file."""
        return decode_image(data, self.recommender.img_size, name or "upload")[None]


def _item_flags(audit: AuditReport | None) -> dict[int, list[str]]:
    if audit is None:
        return {}
    said = {  # in FLAGS' order
        "suspect_label": [suspect.row_id for suspect in audit.suspect_labels],
        "duplicate": [row_id for group in audit.duplicates for row_id in group.row_ids],
        "outlier": [outlier.row_id for outlier in audit.outliers],
        "leak": [row_id for leak in audit.leaks for row_id in (leak.train_row_id, leak.val_row_id)],
    }
    flagged: dict[int, list[str]] = {}
    for flag, row_ids in said.items():
        for row_id in dict.fromkeys(row_ids):  # an item may leak with several
            flagged.setdefault(row_id, []).append(flag)
    return flagged


def served(request: Request) -> Served:
    """A route's dependency: the state the app serves now."""
    return request.app.state.served
