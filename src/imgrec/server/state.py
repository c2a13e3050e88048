"""The served state: the pipeline's outputs one worker answers from, loaded once, and
loaded again when `dvc repro` or `dvc checkout` rebuilds them (`ServedState`)."""

import io
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import numpy as np
from fastapi import Request
from PIL import Image

from imgrec.errors import ImgrecError, MissingOutput, first_line
from imgrec.recommender.audit_report import AuditReport, load_report
from imgrec.recommender.recommendations import Recommendations, load_recommendations
from imgrec.recommender.review import Review
from imgrec.server.config import ServeConfig
from imgrec.serving.query import Recommender, decode_image

log = logging.getLogger(__name__)


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
    # What turns decisions into corrections, of this state's audit and labels; None, and
    # the sentence why, when this catalog cannot be reviewed.
    review: Review | None = None
    review_problem: str | None = None
    # One query at a time per worker: see `imgrec.server`'s docstring.
    lock: threading.Lock = field(default_factory=threading.Lock)
    # /api/map's answer (the map file, its body or why there is none), once per state.
    map_answer: tuple[Path | None, bytes | None, str | None] | None = None

    @classmethod
    def load(cls, config: ServeConfig) -> Self:
        """Everything, or one ImgrecError on what is missing or out of step. Nothing is
        memory-mapped: the pipeline may rewrite these files while they are served."""
        recommender = Recommender.load(
            config.model, config.catalog, config.prepared, config.device,
            audit=config.audit, hashes=config.hashes, mapped=False,
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
        review, review_problem = None, None
        try:
            if config.audit is None:
                raise ImgrecError(
                    "review needs the audit's report, and this server has none (--audit)."
                )
            review = Review.load(config.audit, config.prepared, report=audit)
        except ImgrecError as error:  # a catalog apart from the training data, no report
            review_problem = first_line(error)
        return cls(recommender, recommendations, audit, config.model_name, splits, flags,
                   review, review_problem)  # fmt: skip

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

    def decode(self, data: bytes, name: str | None, max_decoded_bytes: int) -> np.ndarray:
        """(1, S, S, 3) uint8: the upload decoded as the CLI decodes a file, within the
        server's budget of decoded pixels."""
        size = self.recommender.img_size
        return decode_image(data, size, name or "upload", max_decoded_bytes)[None]


def _item_flags(audit: AuditReport | None) -> dict[int, list[str]]:
    flagged: dict[int, list[str]] = {}
    for flag, row_ids in (audit.flagged_rows() if audit else {}).items():  # in FLAGS' order
        for row_id in row_ids:
            flagged.setdefault(row_id, []).append(flag)
    return flagged


def signature(config: ServeConfig) -> tuple:
    """What tells a rebuilt output from the one loaded: each file's inode, size and mtime
    (DVC replaces outputs by rename or link; `cp` over one changes its mtime)."""
    paths = [config.model, config.catalog, config.prepared, config.recommendations,
             config.audit, config.hashes, config.catalog_map]  # fmt: skip
    seen = []
    for path in filter(None, paths):
        files = sorted(path.iterdir()) if path.is_dir() else [path]
        for file in files:
            try:
                stat = os.stat(file)
            except OSError:
                seen.append((str(file), None))
                continue
            seen.append((str(file), stat.st_ino, stat.st_size, stat.st_mtime_ns))
    return tuple(seen)


class ServedState:
    """The `Served` that requests get now. A watcher thread polls the outputs' signature;
    once a change has held still for a poll (a rebuild writes several files), it loads
    them afresh beside the old state and swaps the reference: a request in flight keeps
    the state it started with. Outputs that cannot load (a rebuild half done, out of step)
    leave the old state served and `stale` saying why, until the files change again."""

    def __init__(self, config: ServeConfig, served: Served):
        self.config = config
        self.current = served
        self.stale: str | None = None  # why the files on disk are not what is served
        self.reloads = 0
        self.loaded_signature = signature(config)
        # Decodes run outside the one-query lock, this many at a time: each may hold up to
        # a few times the decode budget (docs/serving.md).
        self.decoding = threading.BoundedSemaphore(config.decoders)
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> None:
        if self.config.reload_poll_s > 0:
            self._watcher = threading.Thread(target=self._watch, name="reload", daemon=True)
            self._watcher.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        settling = self.loaded_signature
        while not self._stop.wait(self.config.reload_poll_s):
            now = signature(self.config)
            if now != settling:  # changing still: wait for it to hold still
                settling = now
            elif now != self.loaded_signature:
                self.reload(now)

    def reload(self, expected: tuple) -> None:
        """Load the outputs afresh and serve them, if they load and held still meanwhile."""
        try:
            fresh = Served.load(self.config)
        except ImgrecError as error:
            self.loaded_signature = expected  # tried: wait for the next change
            self.stale = first_line(error)
            log.warning("the outputs changed but cannot be served (%s); serving the ones "
                        "loaded before", self.stale)  # fmt: skip
            return
        if signature(self.config) != expected:  # rewritten while it loaded: next poll
            return
        self.current, self.loaded_signature, self.stale = fresh, expected, None
        self.reloads += 1
        log.warning("reloaded: %s", fresh.describe())


def served(request: Request) -> Served:
    """A route's dependency: the state the app serves now (a reload swaps it; a request
    keeps the one it got)."""
    return request.app.state.served.current
