"""The review loop over HTTP, for `imgrec serve`: the catalog map and the audit's findings for
the page, and a reviewer's decisions written to the corrections file.

    GET  /api/map      every catalog item's map position, class and audit flags, as arrays
    GET  /api/review   the audit's suspect labels and duplicate groups, and the decisions so far
    POST /api/review   decisions as JSON: written to the corrections file (403 unless --review)

Writing needs `imgrec serve --review`; off localhost the server has a token already
(`ServeConfig`), and every /api route needs it. The write route takes JSON only, so a form
that another site posts (text/plain, no preflight) is refused; a JSON post from another site
needs a CORS preflight, which this server never answers. The corrections module owns the
file: sorted, one row per item, written atomically under a lock that holds across threads
and processes (workers, a CLI command at the same time).
"""

import logging
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from pydantic import BaseModel, Field

from imgrec import corrections
from imgrec.corrections import Correction
from imgrec.errors import ImgrecError, first_line
from imgrec.prepared import label_name

log = logging.getLogger(__name__)

# The corrections file's decisions, and `undo`: forget the item's decision (undecided again).
Decision = Literal["relabel", "drop", "keep", "undo"]
# The audit's flags in the server's order (`server.FLAGS`; a test holds them equal): the page
# gets one small int per item, bit i for flag i.
FLAG_NAMES = ("suspect_label", "duplicate", "outlier", "leak")


class Decided(BaseModel):
    row_id: int
    decision: Decision
    new_label: str = Field("", description="the class to give it: with relabel only")


class Decisions(BaseModel):
    decisions: Annotated[list[Decided], Field(min_length=1, max_length=10_000)]


def json_only(request: Request) -> None:
    """415 for any body but JSON: what a cross-site form can send needs no preflight."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HTTPException(415, "decisions are sent as JSON (Content-Type: application/json).")


def map_points(config, served) -> tuple[dict | None, str | None]:
    """The /api/map answer, or why there is none (no map file, or one of another catalog)."""
    path = config.catalog_map
    if path is None or not path.exists():
        return None, f"no catalog map at {path}; run `dvc repro` to make it."
    from imgrec.catalog_map import load_catalog_map

    catalog = served.recommender.catalog
    coordinates = load_catalog_map(path)
    if not np.array_equal(coordinates.row_ids, catalog.row_ids):
        return None, f"the catalog map in {path} is not of this catalog; run `dvc repro`."
    flag_bits = np.zeros(len(catalog.row_ids), dtype=np.int64)
    position = {int(row_id): p for p, row_id in enumerate(catalog.row_ids)}
    for row_id, said in served.flags.items():
        if row_id in position:
            flag_bits[position[row_id]] = sum(1 << FLAG_NAMES.index(f) for f in said)
    labels = np.asarray(catalog.labels, dtype=np.int64)
    return {
        "row_ids": catalog.row_ids.tolist(),
        # 5 decimals: a map is never wider than a few hundred units, and screens are pixels
        "x": np.round(coordinates.xy[:, 0].astype(np.float64), 5).tolist(),
        "y": np.round(coordinates.xy[:, 1].astype(np.float64), 5).tolist(),
        "labels": np.where(labels < 0, -1, labels).tolist(),  # -1: no label
        "classes": list(catalog.class_names),
        "flags": flag_bits.tolist(),  # bit i: flag_names[i]
        "flag_names": list(FLAG_NAMES),
    }, None


def review_router(config, served) -> APIRouter:
    """The routes above, over what `served` serves and the files `config` names."""
    router = APIRouter()
    catalog = served.recommender.catalog
    points, no_map = map_points(config, served)
    if no_map:
        log.info("the page shows no map: %s", no_map)
    positions = {int(row_id): p for p, row_id in enumerate(catalog.row_ids)}
    read_only = (
        None if config.review
        else "review is read-only: this server was started without --review."
    )  # fmt: skip

    @router.get("/map")
    def catalog_map() -> dict:
        """Every catalog item as a point: `x`, `y`, `labels` (index into `classes`, -1 none)
        and `flags` (bit i set: the audit says `flag_names[i]`) run parallel to `row_ids`."""
        if points is None:
            raise HTTPException(404, no_map)
        return points

    def decisions_so_far() -> dict[str, dict]:
        if config.corrections is None:
            return {}
        return {
            str(c.row_id): {"decision": c.decision, "new_label": c.new_label}
            for c in corrections.load(config.corrections)
        }

    @router.get("/review")
    def review() -> dict:
        """What to review (the audit's suspect labels and duplicate groups), the decisions
        the corrections file holds, and whether this server may write it."""
        audit = served.audit
        return {
            "writable": read_only is None,
            "read_only_because": read_only,
            "classes": list(catalog.class_names),
            "suspect_labels": [vars(s) for s in audit.suspect_labels] if audit else [],
            "duplicates": [
                {"row_ids": list(g.row_ids), "kind": g.kind, "similarity": g.similarity}
                for g in (audit.duplicates if audit else [])
            ],
            "decisions": decisions_so_far(),
        }

    def correction(decided: Decided) -> Correction:
        if decided.row_id not in positions:
            raise HTTPException(404, f"no catalog item has row id {decided.row_id}.")
        if decided.new_label and decided.new_label not in catalog.class_names:
            raise HTTPException(422, f"new_label: no class is called {decided.new_label!r}.")
        seen = label_name(catalog.class_names, catalog.labels[positions[decided.row_id]])
        try:
            return Correction(decided.row_id, seen or "", decided.decision, decided.new_label)
        except ImgrecError as error:
            raise HTTPException(422, first_line(error)) from error

    @router.post("/review", dependencies=[Depends(json_only)])
    def decide(body: Decisions) -> dict:
        """Record decisions (a later one for a row replaces its earlier one; `undo` forgets
        it) in the corrections file, which prepare applies on the next `dvc repro`."""
        if read_only:
            raise HTTPException(403, read_only)
        forget = [d.row_id for d in body.decisions if d.decision == "undo"]
        # every decision checked before anything is written
        decided = [correction(d) for d in body.decisions if d.decision != "undo"]
        merged = corrections.update(config.corrections, decided, forget)
        return {"written": len(decided), "forgotten": len(forget), "corrections": len(merged)}

    return router
