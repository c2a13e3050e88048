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
from collections import Counter
from pathlib import Path
from typing import Annotated, Literal, Self

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError, model_validator

from imgrec.data import corrections
from imgrec.data.corrections import Correction
from imgrec.errors import ImgrecError, first_line
from imgrec.recommender.audit_report import FLAGS
from imgrec.recommender.map_coordinates import load_coordinates
from imgrec.server.config import ServeConfig
from imgrec.server.state import Served, served

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

    @model_validator(mode="after")
    def one_per_row(self) -> Self:
        counted = Counter(d.row_id for d in self.decisions)
        twice = sorted(row_id for row_id, n in counted.items() if n > 1)
        if twice:
            raise ValueError(f"row {twice[0]} has two decisions in one request; send one")
        return self


def map_points(catalog_map: Path | None, served: Served) -> tuple[dict | None, str | None]:
    """The /api/map answer for the map file at `catalog_map`, or why there is none."""
    if catalog_map is None:
        return None, "this server was started without a catalog map (--map)."
    try:
        coordinates = load_coordinates(catalog_map)
    except ImgrecError as error:  # missing or unreadable: the page shows the sentence
        return None, first_line(error)
    catalog = served.recommender.catalog
    if not np.array_equal(coordinates.row_ids, catalog.row_ids):
        return None, f"the catalog map in {catalog_map} is not of this catalog; run `dvc repro`."
    flag_bits = np.zeros(len(catalog.row_ids), dtype=np.int64)
    position = {int(row_id): p for p, row_id in enumerate(catalog.row_ids)}
    for row_id, said in served.flags.items():
        if row_id in position:
            flag_bits[position[row_id]] = sum(1 << FLAGS.index(flag) for flag in said)
    return {
        "row_ids": catalog.row_ids.tolist(),
        "x": coordinates.xy[:, 0].tolist(),  # in [0, 1], as few decimals as the file has
        "y": coordinates.xy[:, 1].tolist(),
        "labels": np.maximum(np.asarray(catalog.labels, dtype=np.int64), -1).tolist(),
        "classes": list(catalog.class_names),
        "flags": flag_bits.tolist(),
        "flag_names": list(FLAGS),
    }, None


@router.get("/map", responses={404: {"description": "no map of this catalog is served"}})
def catalog_map(served: State, config: Config) -> Response:
    """Every catalog item as a point: `x`, `y`, `labels` (an index into `classes`; -1: none)
    and `flags` (bit i set: the audit says `flag_names[i]`) run parallel to `row_ids`."""
    # Encoded once per served state (it is reloaded whole, and the answer goes with it),
    # not per request: at 40,000 items FastAPI's encoder would take longer than the page
    # takes to draw them.
    cached = served.map_answer
    if cached is None or cached[0] != config.catalog_map:
        points, problem = map_points(config.catalog_map, served)
        body = None if points is None else json.dumps(points, separators=(",", ":")).encode()
        cached = served.map_answer = (config.catalog_map, body, problem)
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
    refused = why_read_only(served, config)
    return {
        "writable": refused is None,
        "read_only_because": refused,
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


def why_read_only(served: Served, config: ServeConfig) -> str | None:
    if not config.review:
        return READ_ONLY
    return served.review_problem  # a catalog apart from the training data, no audit report


def json_only(request: Request) -> None:
    """415 for any body but JSON: what a cross-site form can send needs no preflight."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise HTTPException(415, "decisions are sent as JSON (Content-Type: application/json).")


@router.post("/review", dependencies=[Depends(json_only)])
async def decide(request: Request, served: State, config: Config) -> dict:
    """Record decisions in the corrections file, which prepare applies on the next `dvc
    repro`: a later decision for a row replaces its earlier one; `undo` forgets it."""
    if not config.review:
        raise HTTPException(403, READ_ONLY)
    # Read here, not by FastAPI: the request guard's 413 and 408 refuse the body as it is
    # read, and FastAPI would turn them into a 400 about parsing.
    data = await request.body()
    try:
        body = Decisions.model_validate_json(data)
    except ValidationError as error:  # 422, one sentence, as for any other invalid body
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in error.errors()]
        ) from None
    return await run_in_threadpool(record, body, served, config)


def record(body: Decisions, served: Served, config: ServeConfig) -> dict:
    """Check every decision against the served state's audit and labels, then write them."""
    if served.review is None:  # a catalog apart from the training data: 422, one sentence
        raise ImgrecError(served.review_problem)
    decider = served.review

    def correction(decided: Decided) -> Correction:
        if decided.decision == "relabel":
            return decider.relabel(decided.row_id, decided.new_label)
        if decided.new_label:
            raise ImgrecError(f"row {decided.row_id}: only a relabel has a new_label.")
        return (
            decider.drop(decided.row_id)
            if decided.decision == "drop"
            else decider.keep(decided.row_id)
        )

    forget = [d.row_id for d in body.decisions if d.decision == "undo"]
    if forget:
        # Against the file, not the labels: an applied drop left the prepared data.
        held = {c.row_id for c in corrections.load(config.corrections)}
        for row_id in forget:
            if row_id not in held:
                raise ImgrecError(f"row {row_id} has no decision to undo.")
    # every decision checked before anything is written
    decided = [correction(d) for d in body.decisions if d.decision != "undo"]
    merged = corrections.update(config.corrections, decided, forget)
    return {"written": len(decided), "forgotten": len(forget), "corrections": len(merged)}
