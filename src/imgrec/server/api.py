"""The JSON API under /api: thin routes over `query`, answering from the served state."""

import re
from dataclasses import asdict
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BeforeValidator
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from imgrec.data.prepared import label_name
from imgrec.errors import ImgrecError
from imgrec.recommender.audit_report import FLAGS, Flag
from imgrec.server import events
from imgrec.server.state import Served, ServedState, served
from imgrec.serving.query import (
    classify_answer,
    item_neighbors,
    item_position,
    recommend_answer,
)

router = APIRouter()
State = Annotated[Served, Depends(served)]
MAX_PARTS = 8  # parts of a multipart form, the image among them


def _digits(value: object) -> object:
    """A row id as typed in a path: digits (and a minus), nothing pydantic would also take
    (`1.0`, `+5`, ` 5`, `1_0`), so one item has one URL."""
    if isinstance(value, str) and not re.fullmatch(r"-?[0-9]{1,18}", value):
        raise ValueError("a row id is an integer written in digits")
    return value


RowId = Annotated[int, BeforeValidator(_digits), Path(description="an item's row id")]


async def read_upload(request: Request) -> tuple[bytes, str | None]:
    """The image a request carries, as its body or as the multipart field `image` (a file
    or not: browsers and curl send a filename, other clients may not), and the file's name
    where the client gave one."""
    media_type, options = parse_options_header(request.headers.get("content-type"))
    if media_type.lower() != b"multipart/form-data":
        return await request.body(), None
    boundary = {key.lower(): value for key, value in options.items()}.get(b"boundary")
    if not boundary:
        raise HTTPException(422, "the multipart form has no boundary.")
    # Each part: its headers, and its bytes (the whole form is under the upload cap).
    parts: list[tuple[dict[bytes, bytes], bytearray]] = []
    field, value = bytearray(), bytearray()  # the header being read

    def on_part_begin() -> None:
        if len(parts) == MAX_PARTS:
            raise HTTPException(422, f"the multipart form has over {MAX_PARTS} parts.")
        parts.append(({}, bytearray()))

    def on_header_end() -> None:
        parts[-1][0][bytes(field).strip().lower()] = bytes(value).strip()
        field.clear()
        value.clear()

    callbacks = {
        "on_part_begin": on_part_begin,
        "on_header_field": lambda data, start, end: field.extend(data[start:end]),
        "on_header_value": lambda data, start, end: value.extend(data[start:end]),
        "on_header_end": on_header_end,
        "on_part_data": lambda data, start, end: parts[-1][1].extend(data[start:end]),
    }
    parser = MultipartParser(boundary, callbacks)
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except HTTPException:
        raise
    except Exception as error:  # python_multipart's errors on malformed forms
        raise HTTPException(422, "the multipart form is malformed.") from error
    for headers, data in parts:
        disposition, options = parse_options_header(headers.get(b"content-disposition"))
        options = {key.lower(): value for key, value in options.items()}
        if disposition.lower() == b"form-data" and options.get(b"name") == b"image":
            filename = options.get(b"filename")
            return bytes(data), filename.decode("utf-8", "replace") if filename else None
    raise HTTPException(422, "the multipart form has no field `image`.")


IMAGE_BODY = {  # the request body of the two image routes, which read it themselves
    "required": True,
    "content": {
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"image": {"type": "string", "format": "binary"}},
                "required": ["image"],
            }
        },
    },
}


@router.api_route("/health", methods=["GET", "HEAD"])
def health(request: Request, served: State) -> dict:
    """The server is up; what it serves: catalog size, classes, the model and its md5;
    `stale`: why the outputs on disk are not the ones served (null: they are), `reloads`:
    how often it loaded rebuilt ones; `events`: what clients did that it refused or lost,
    counted since this worker started."""
    catalog = served.recommender.catalog
    state: ServedState = request.app.state.served
    return {
        "status": "ok" if state.stale is None else "stale",
        "stale": state.stale,
        "reloads": state.reloads,
        "events": dict(events.counts),
        "catalog_size": served.catalog_size,
        "classes": catalog.class_names,
        "model": {"file": served.model_name, "md5": catalog.model_md5},
        "audit": served.audit is not None,
        "flags": list(FLAGS) if served.audit is not None else [],
        "duplicates_collapsed": served.recommender.duplicates is not None,
        "max_upload_mb": request.app.state.config.max_upload_mb,
        "max_decoded_mb": request.app.state.config.max_decoded_mb,
    }


def check_top_k(served: Served, top_k: int) -> None:
    if top_k > served.catalog_size:
        raise HTTPException(422, f"top_k: {top_k} is more than the {served.catalog_size} "
                            "catalog items.")  # fmt: skip


def decoded(request: Request, served: Served, data: bytes, name: str | None) -> np.ndarray:
    """The upload decoded (in a worker thread) outside the one-query lock, a few at a time."""
    state: ServedState = request.app.state.served
    with state.decoding:
        return served.decode(data, name, state.config.max_decoded_bytes)


@router.post("/recommend", openapi_extra={"requestBody": IMAGE_BODY})
async def recommend(
    request: Request, served: State, top_k: Annotated[int, Query(ge=1)] = 5
) -> JSONResponse:
    """The top-k catalog items for an image, and whether it is unlike every catalog
    image: one entry of `recommend --json` (`query`: the uploaded file's name, if any)."""
    check_top_k(served, top_k)  # before reading any image, as the CLI does
    data, name = await read_upload(request)

    def answer() -> dict:
        image = decoded(request, served, data, name)
        with served.lock:
            results, novel, copies = served.recommender.recommend(image, top_k)
        return recommend_answer(name, results[0], novel[0], copies[0])

    return JSONResponse(await run_in_threadpool(answer))


@router.post("/classify", openapi_extra={"requestBody": IMAGE_BODY})
async def classify(request: Request, served: State) -> JSONResponse:
    """The class of an image, its probability and the no-close-match flag: one entry of
    `classify --json` (`image`: the uploaded file's name, if any)."""
    data, name = await read_upload(request)

    def answer() -> dict:
        image = decoded(request, served, data, name)
        with served.lock:
            (prediction,) = served.recommender.classify(image)
        return classify_answer(name, *prediction)

    return JSONResponse(await run_in_threadpool(answer))


@router.get("/items")
def items(
    served: State,
    label: Annotated[str | None, Query(description="only this class")] = None,
    flag: Annotated[Flag | None, Query(description="only what the audit flags so")] = None,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 48,
) -> dict:
    """A page of the catalog in row-id order, for the grid; `total` counts every match."""
    catalog = served.recommender.catalog
    keep = np.ones(served.catalog_size, dtype=bool)
    if label is not None:
        if label not in catalog.class_names:
            raise HTTPException(422, f"label: no class is called {label!r}.")
        keep &= catalog.labels == catalog.class_names.index(label)
    if flag is not None:
        if served.audit is None:
            raise HTTPException(422, "flag: no audit report is served (the audit stage's).")
        flagged = [r for r, said in served.flags.items() if flag in said]
        keep &= np.isin(catalog.row_ids, flagged)
    positions = np.flatnonzero(keep)
    return {
        "total": len(positions),
        "offset": offset,
        "limit": limit,
        "items": [item_summary(served, int(p)) for p in positions[offset : offset + limit]],
    }


def item_summary(served: Served, position: int) -> dict:
    catalog = served.recommender.catalog
    row_id = int(catalog.row_ids[position])
    return {
        "row_id": row_id,
        "label": label_name(catalog.class_names, catalog.labels[position]),
        "split": served.splits[position],
        "flags": served.flags.get(row_id, []) if served.audit is not None else None,
    }


@router.get("/items/{row_id}")
def item(row_id: RowId, served: State) -> dict:
    """An item: its label and split, its top-k as the recommend stage stored them, and
    what the audit says of it (`audit`: null where no audit report is served)."""
    catalog = served.recommender.catalog
    summary = item_summary(served, item_position(catalog, row_id))
    neighbors = item_neighbors(catalog, served.recommendations, row_id)
    flags = asdict(served.audit.flags(row_id)) if served.audit is not None else None
    return summary | {"neighbors": [vars(n) for n in neighbors], "audit": flags}


@router.get("/items/{row_id}/image", response_class=Response)
def item_image(row_id: RowId, served: State) -> Response:
    """The item's image as the model sees it: its prepared pixels, as PNG."""
    position = item_position(served.recommender.catalog, row_id)
    try:
        png = served.image_png(position)
    except ImgrecError as error:  # its file rewritten in place: the reload is on its way
        raise HTTPException(503, "the catalog's images changed on disk; the server loads "
                            "them again (see /api/health).") from error  # fmt: skip
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})
