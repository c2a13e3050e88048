"""The review loop under /api: the catalog map and the audit's findings for the page, and a
reviewer's decisions written to the corrections file.

    GET  /api/map      every catalog item's map position, class and audit flags, as arrays
    GET  /api/review   the audit's suspect labels and duplicate groups, and the decisions so far
    POST /api/review   decisions as JSON, written to the corrections file (403 unless --review)

Writing needs `imgrec serve --review`, and off localhost a token (`ServeConfig`), which every
/api route then needs. The write route takes JSON only: a form another site posts (text/plain,
no preflight) is refused, and a JSON post from another site needs a CORS preflight, which this
server never answers. `corrections` owns the file: sorted, one row per item, written
atomically under a lock that holds across threads and processes (workers, a CLI command).
"""

import json
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from imgrec import corrections
from imgrec.corrections import Correction
from imgrec.errors import ImgrecError, first_line
from imgrec.prepared import label_name
from imgrec.query import item_position
from imgrec.server.config import ServeConfig
from imgrec.server.state import FLAGS, Served, served

router = APIRouter()
State = Annotated[Served, Depends(served)]


def config(request: Request) -> ServeConfig:
    return request.app.state.config


Config = Annotated[ServeConfig, Depends(config)]
# The corrections file's decisions, and `undo`: forget the item's decision (undecided again).
Decision = Literal["relabel", "drop", "keep", "undo"]


class Decided(BaseModel):
    row_id: int
    decision: Decision
    new_label: str = Field("", description="the class it gets: with relabel only")


class Decisions(BaseModel):
    decisions: Annotated[list[Decided], Field(min_length=1, max_length=10_000)]


def map_points(catalog_map, served: Served) -> tuple[dict | None, str | None]:
    """The /api/map answer for the map file at `catalog_map`, or why there is none."""
    if catalog_map is None or not catalog_map.exists():
        return None, f"no catalog map at {catalog_map}; run `dvc repro` to make it."
    from imgrec.catalog_map import load_catalog_map

    catalog = served.recommender.catalog
    coordinates = load_catalog_map(catalog_map)
    if not np.array_equal(coordinates.row_ids, catalog.row_ids):
        return None, f"the catalog map in {catalog_map} is not of this catalog; run `dvc repro`."
    flag_bits = np.zeros(len(catalog.row_ids), dtype=np.int64)
    position = {int(row_id): p for p, row_id in enumerate(catalog.row_ids)}
    for row_id, said in served.flags.items():
        if row_id in position:
            flag_bits[position[row_id]] = sum(1 << FLAGS.index(flag) for flag in said)
    return {
        "row_ids": catalog.row_ids.tolist(),
        # 5 decimals: far finer than a pixel for any map a projection draws
        "x": np.round(coordinates.xy[:, 0].astype(np.float64), 5).tolist(),
        "y": np.round(coordinates.xy[:, 1].astype(np.float64), 5).tolist(),
        "labels": np.maximum(np.asarray(catalog.labels, dtype=np.int64), -1).tolist(),
        "classes": list(catalog.class_names),
        "flags": flag_bits.tolist(),
        "flag_names": list(FLAGS),
    }, None


@router.get("/map", responses={404: {"description": "no map of this catalog is served"}})
def catalog_map(request: Request, served: State, config: Config) -> Response:
    """Every catalog item as a point: `x`, `y`, `labels` (an index into `classes`; -1: none)
    and `flags` (bit i set: the audit says `flag_names[i]`) run parallel to `row_ids`."""
    # Encoded once per served state (it is reloaded whole), not per request: at 40,000
    # items FastAPI's encoder would take longer than the page takes to draw them.
    cached = getattr(request.app.state, "catalog_map", None)
    if cached is None or cached[0] is not served:
        points, problem = map_points(config.catalog_map, served)
        body = None if points is None else json.dumps(points, separators=(",", ":")).encode()
        cached = request.app.state.catalog_map = (served, body, problem)
    _, body, problem = cached
    if body is None:
        raise HTTPException(404, problem)
    return Response(body, media_type="application/json")


@router.get("/review")
def review(served: State, config: Config) -> dict:
    """What to review (the audit's suspect labels and duplicate groups), the decisions the
    corrections file holds, and whether this server may write it."""
    audit = served.audit
    held = corrections.load(config.corrections) if config.corrections is not None else []
    return {
        "writable": config.review,
        "read_only_because": None if config.review else READ_ONLY,
        "classes": list(served.recommender.catalog.class_names),
        "suspect_labels": [vars(s) for s in audit.suspect_labels] if audit else [],
        "duplicates": [
            {"row_ids": list(g.row_ids), "kind": g.kind, "similarity": g.similarity}
            for g in (audit.duplicates if audit else [])
        ],
        "decisions": {str(c.row_id): {"decision": c.decision, "new_label": c.new_label}
                      for c in held},
    }  # fmt: skip


READ_ONLY = "review is read-only: this server was started without --review."


def json_only(request: Request) -> None:
    """415 for any body but JSON: what a cross-site form can send needs no preflight."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HTTPException(415, "decisions are sent as JSON (Content-Type: application/json).")


@router.post("/review", dependencies=[Depends(json_only)])
def decide(body: Decisions, served: State, config: Config) -> dict:
    """Record decisions in the corrections file, which prepare applies on the next `dvc
    repro`: a later decision for a row replaces its earlier one; `undo` forgets it."""
    if not config.review:
        raise HTTPException(403, READ_ONLY)
    catalog = served.recommender.catalog

    def correction(decided: Decided) -> Correction:
        position = item_position(catalog, decided.row_id)  # 404 for an unknown row id
        if decided.new_label and decided.new_label not in catalog.class_names:
            raise HTTPException(422, f"new_label: no class is called {decided.new_label!r}.")
        seen = label_name(catalog.class_names, catalog.labels[position])
        try:
            return Correction(decided.row_id, seen or "", decided.decision, decided.new_label)
        except ImgrecError as error:
            raise HTTPException(422, first_line(error)) from error

    forget = [d.row_id for d in body.decisions if d.decision == "undo"]
    for row_id in forget:
        item_position(catalog, row_id)
    # every decision checked before anything is written
    decided = [correction(d) for d in body.decisions if d.decision != "undo"]
    merged = corrections.update(config.corrections, decided, forget)
    return {"written": len(decided), "forgotten": len(forget), "corrections": len(merged)}
