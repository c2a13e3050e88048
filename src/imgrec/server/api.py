"""The JSON API under /api: thin routes over `query`, answering from the served state."""

from dataclasses import asdict
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from imgrec.prepared import label_name
from imgrec.query import (
    classify_answer,
    item_neighbors,
    item_position,
    recommend_answer,
)
from imgrec.server.state import FLAGS, Flag, Served, served

router = APIRouter()
State = Annotated[Served, Depends(served)]


async def read_upload(request: Request) -> tuple[bytes, str | None]:
    """The image a request carries, as its body or as the multipart file field `image`, and
    the file's name where the client gave one."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        async with request.form(max_files=1, max_fields=8) as form:
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise HTTPException(422, "the multipart form has no file field `image`.")
            return await upload.read(), upload.filename
    return await request.body(), None


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


@router.get("/health")
def health(request: Request, served: State) -> dict:
    """The server is up; what it serves: catalog size, classes, the model and its md5."""
    catalog = served.recommender.catalog
    return {
        "status": "ok",
        "catalog_size": served.catalog_size,
        "classes": catalog.class_names,
        "model": {"file": served.model_name, "md5": catalog.model_md5},
        "audit": served.audit is not None,
        "flags": list(FLAGS) if served.audit is not None else [],
        "duplicates_collapsed": served.recommender.duplicates is not None,
        "max_upload_mb": request.app.state.config.max_upload_mb,
    }


@router.post("/recommend", openapi_extra={"requestBody": IMAGE_BODY})
async def recommend(
    request: Request, served: State, top_k: Annotated[int, Query(ge=1)] = 5
) -> JSONResponse:
    """The top-k catalog items for an image, and whether it is unlike every catalog
    image: one entry of `recommend --json` (`query`: the uploaded file's name, if any)."""
    served.recommender.check_top_k(top_k)  # before reading any image, as the CLI does
    data, name = await read_upload(request)

    def answer() -> dict:
        with served.lock:
            image = served.decode(data, name)
            results, novel, copies = served.recommender.recommend(image, top_k)
        return recommend_answer(name, results[0], novel[0], copies[0])

    return JSONResponse(await run_in_threadpool(answer))


@router.post("/classify", openapi_extra={"requestBody": IMAGE_BODY})
async def classify(request: Request, served: State) -> JSONResponse:
    """The class of an image, its probability and the no-close-match flag: one entry of
    `classify --json` (`image`: the uploaded file's name, if any)."""
    data, name = await read_upload(request)

    def answer() -> dict:
        with served.lock:
            (prediction,) = served.recommender.classify(served.decode(data, name))
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
def item(row_id: int, served: State) -> dict:
    """An item: its label and split, its top-k as the recommend stage stored them, and
    what the audit says of it (`audit`: null where no audit report is served)."""
    catalog = served.recommender.catalog
    summary = item_summary(served, item_position(catalog, row_id))
    neighbors = item_neighbors(catalog, served.recommendations, row_id)
    flags = asdict(served.audit.flags(row_id)) if served.audit is not None else None
    return summary | {"neighbors": [vars(n) for n in neighbors], "audit": flags}


@router.get("/items/{row_id}/image", response_class=Response)
def item_image(row_id: int, served: State) -> Response:
    """The item's image as the model sees it: its prepared pixels, as PNG."""
    png = served.image_png(item_position(served.recommender.catalog, row_id))
    return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})
