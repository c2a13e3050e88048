"""The recommender over HTTP, for `python -m imgrec serve`: FastAPI on uvicorn.

    GET  /api/health                  status, catalog size, the model file and its md5
    POST /api/recommend?top_k=K       an image (the body, or multipart field `image`): top-k
    POST /api/classify                an image: its class
    GET  /api/items?label=&flag=      a page of the catalog, filtered by class or audit flag
    GET  /api/items/{row_id}          an item: label, split, stored top-k, audit flags
    GET  /api/items/{row_id}/image    the item's prepared pixels as PNG
    GET  /                            the page (static files shipped in the package)
    GET  /docs, /openapi.json         the API, documented by FastAPI

Routes are thin: every answer comes from `query`, the functions the CLI prints, so an
answer over HTTP is the same bits as `recommend --json` / `classify --json` for that one
image. Each worker process loads the outputs once (`Served.load`) and answers one query at
a time: torch spreads one forward pass over every core already, and embedding concurrent
queries as one batch would change their bits (benchmarks/RESULTS.md, "Serving").

Safe by default: localhost only unless a token is set or explicitly waived (`ServeConfig`);
a body over the upload cap is refused on its Content-Length before any of it is read, or as
it streams when it has none; the decoder decides the format from the bytes (never the
client's content type), with the catalog's own limits; nothing a request holds names a file
on the server; no response carries a traceback.
"""

import io
import ipaddress
import json
import logging
import os
import secrets
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Literal, Self, get_args

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, UploadFile

from imgrec.audit_report import AuditReport, load_report
from imgrec.errors import ImgrecError, MissingOutput, first_line
from imgrec.images import FORMATS
from imgrec.prepared import label_name
from imgrec.query import (
    Recommender,
    UnknownItem,
    UnusableQuery,
    classify_answer,
    decode_image,
    item_neighbors,
    item_position,
    recommend_answer,
)
from imgrec.recommendations import Recommendations, load_recommendations
from imgrec.review_api import review_router

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"  # package data (pyproject), so an install has it
# A worker process that uvicorn starts (--workers > 1) reads its config from here.
CONFIG_VARIABLE = "IMGREC_SERVE_CONFIG"
Flag = Literal["suspect_label", "duplicate", "outlier", "leak"]  # what the audit says of an item
FLAGS = get_args(Flag)
# The page is data-driven: nothing it shows may run, and everything it loads is the server's.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (a name other than localhost may
    resolve anywhere, so it counts as not)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeConfig:
    """What `imgrec serve` serves and how; validated here, before anything loads."""

    model: Path
    catalog: Path
    prepared: Path
    recommendations: Path
    # Both used where they exist, as the query command uses them: the audit's flags, and
    # its duplicate groups collapsed in every top-k (which needs the hashes too).
    audit: Path | None  # None: not asked for (a catalog of one's own has no audit by default)
    hashes: Path | None
    model_name: str  # how /api/health names the model file: relative to the repository
    catalog_map: Path | None = None  # the catalog's 2-D map for the page; None: no map
    corrections: Path | None = None  # where the page's review decisions go (with `review`)
    review: bool = False  # the page may write the corrections file (--review)
    device: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    token: str | None = None  # every /api call needs `Authorization: Bearer TOKEN`
    no_token: bool = False  # serve another host than localhost without a token, on purpose
    max_upload_mb: float = 20.0
    # Connections beyond this get 503 at once: with the upload cap, it bounds the memory
    # that request bodies can take, whatever the load.
    limit_concurrency: int = 64
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.token is not None and not self.token:
            raise ImgrecError("the token is empty; set a non-empty IMGREC_TOKEN or --token.")
        if self.token and self.no_token:
            raise ImgrecError("--no-token contradicts the token that is set (IMGREC_TOKEN).")
        if not is_loopback(self.host) and not self.token and not self.no_token:
            raise ImgrecError(
                f"--host {self.host} would serve beyond this machine with no token: set one "
                "(IMGREC_TOKEN or --token), or pass --no-token to serve without one."
            )
        if self.review and self.corrections is None:
            raise ImgrecError("--review needs a corrections file to write (--corrections).")
        if self.review and not is_loopback(self.host) and not self.token:
            raise ImgrecError(
                f"--review on --host {self.host} needs a token (IMGREC_TOKEN or --token): "
                "anyone who reaches the server could change the labels."
            )
        if not 0 < self.max_upload_mb < 2**20:  # a number of MB; also refuses nan and inf
            raise ImgrecError(f"--max-upload-mb must be a positive size, got {self.max_upload_mb}.")
        if not 0 < self.port < 2**16:
            raise ImgrecError(f"--port must be between 1 and 65535, got {self.port}.")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    def to_json(self) -> str:
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)}, default=str)

    @classmethod
    def from_json(cls, text: str) -> Self:
        values = json.loads(text)
        paths = ("model", "catalog", "prepared", "recommendations", "audit", "hashes",
                 "catalog_map", "corrections")  # fmt: skip
        for name in paths:
            values[name] = None if values[name] is None else Path(values[name])
        return cls(**values)


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
    # One query at a time per worker: see the module's docstring.
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


class UploadLimit:
    """413 for a request body over `max_bytes`, before it is read whole: at once on its
    Content-Length, or, for a body without one (chunked), as soon as it streams past."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def too_large(self) -> HTTPException:
        # Closing the connection: otherwise uvicorn would read on, and drop, the rest.
        return HTTPException(
            413,
            f"the upload is over the {self.max_bytes / 2**20:g} MB limit.",
            headers={"Connection": "close"},
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_bytes:
            error = self.too_large()
            response = JSONResponse({"detail": error.detail}, error.status_code, error.headers)
            return await response(scope, receive, send)
        received = 0

        async def counted_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self.too_large()  # in the route, which answers it as any HTTPException
            return message

        await self.app(scope, counted_receive, send)


def token_check(token: str):
    """A dependency that lets a request through only with `Authorization: Bearer TOKEN`."""
    bearer = HTTPBearer(
        auto_error=False, description="the server's token (IMGREC_TOKEN or --token)"
    )

    def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]):
        given = credentials.credentials.encode() if credentials else b""
        if not secrets.compare_digest(given, token.encode()):  # in constant time
            raise HTTPException(
                401,
                "this server needs its token: send `Authorization: Bearer TOKEN`.",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


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


def create_app(config: ServeConfig, served: Served | None = None) -> FastAPI:
    """The app over `served` (loaded from `config` when not given)."""
    served = served or Served.load(config)
    app = FastAPI(
        title="imgrec",
        summary="More like this, and the class, for any image, from the pipeline's outputs.",
        description="Answers are the same bits as `python -m imgrec recommend --json` and "
        "`classify --json` give for one image. The page at `/` browses the catalog.",
    )
    app.add_middleware(UploadLimit, max_bytes=config.max_upload_bytes)
    token = [Depends(token_check(config.token))] if config.token else []
    api = APIRouter(prefix="/api", dependencies=token)
    catalog = served.recommender.catalog

    @api.get("/health")
    def health() -> dict:
        """The server is up; what it serves: catalog size, classes, the model and its md5."""
        return {
            "status": "ok",
            "catalog_size": served.catalog_size,
            "classes": catalog.class_names,
            "model": {"file": served.model_name, "md5": catalog.model_md5},
            "audit": served.audit is not None,
            "flags": list(FLAGS) if served.audit is not None else [],
            "duplicates_collapsed": served.recommender.duplicates is not None,
            "max_upload_mb": config.max_upload_mb,
        }

    @api.post("/recommend", openapi_extra={"requestBody": IMAGE_BODY})
    async def recommend(request: Request, top_k: Annotated[int, Query(ge=1)] = 5) -> JSONResponse:
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

    @api.post("/classify", openapi_extra={"requestBody": IMAGE_BODY})
    async def classify(request: Request) -> JSONResponse:
        """The class of an image, its probability and the no-close-match flag: one entry of
        `classify --json` (`image`: the uploaded file's name, if any)."""
        data, name = await read_upload(request)

        def answer() -> dict:
            with served.lock:
                (prediction,) = served.recommender.classify(served.decode(data, name))
            return classify_answer(name, *prediction)

        return JSONResponse(await run_in_threadpool(answer))

    @api.get("/items")
    def items(
        label: Annotated[str | None, Query(description="only this class")] = None,
        flag: Annotated[Flag | None, Query(description="only what the audit flags so")] = None,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=500)] = 48,
    ) -> dict:
        """A page of the catalog in row-id order, for the grid; `total` counts every match."""
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
            "items": [item_summary(int(p)) for p in positions[offset : offset + limit]],
        }

    def item_summary(position: int) -> dict:
        row_id = int(catalog.row_ids[position])
        return {
            "row_id": row_id,
            "label": label_name(catalog.class_names, catalog.labels[position]),
            "split": served.splits[position],
            "flags": served.flags.get(row_id, []) if served.audit is not None else None,
        }

    @api.get("/items/{row_id}")
    def item(row_id: int) -> dict:
        """An item: its label and split, its top-k as the recommend stage stored them, and
        what the audit says of it (`audit`: null where no audit report is served)."""
        summary = item_summary(item_position(catalog, row_id))
        neighbors = item_neighbors(catalog, served.recommendations, row_id)
        flags = asdict(served.audit.flags(row_id)) if served.audit is not None else None
        return summary | {"neighbors": [vars(n) for n in neighbors], "audit": flags}

    @api.get("/items/{row_id}/image", response_class=Response)
    def item_image(row_id: int) -> Response:
        """The item's image as the model sees it: its prepared pixels, as PNG."""
        png = served.image_png(item_position(catalog, row_id))
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    api.include_router(review_router(config, served))
    app.include_router(api)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": PAGE_POLICY})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    add_error_handlers(app)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error is JSON with a one-sentence `detail`; a bug's traceback goes to the log."""

    def answer(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"][1:]) or str(first["loc"][0])
        message = first["msg"][0].lower() + first["msg"][1:]
        return answer(422, f"{where}: {message.rstrip('.')}.")

    @app.exception_handler(UnusableQuery)
    async def unusable(request: Request, error: UnusableQuery) -> JSONResponse:
        if error.skip_reason == "null_image":
            return answer(400, "the request holds no image: send it as the body or as the "
                          "multipart field `image`.")  # fmt: skip
        if error.skip_reason == "too_large":
            return answer(413, f"the upload is {error.reason}.")
        return answer(422, f"the upload is {error.reason}; accepted formats: {', '.join(FORMATS)}.")

    @app.exception_handler(UnknownItem)
    async def unknown(request: Request, error: UnknownItem) -> JSONResponse:
        return answer(404, first_line(error))

    @app.exception_handler(ImgrecError)
    async def refused(request: Request, error: ImgrecError) -> JSONResponse:
        return answer(422, first_line(error))

    # Starlette raises the exception on after this answer, so uvicorn logs its traceback.
    @app.exception_handler(Exception)
    async def bug(request: Request, error: Exception) -> JSONResponse:
        return answer(500, "internal error (a bug): the server's log has the details.")


def worker_app() -> FastAPI:
    """The app in a worker process that uvicorn started (`--workers` > 1)."""
    return create_app(ServeConfig.from_json(os.environ[CONFIG_VARIABLE]))


def serve(config: ServeConfig) -> None:
    """Load and check the outputs (an ImgrecError before any port opens), then run uvicorn
    until Ctrl-C or SIGTERM."""
    import uvicorn

    served = Served.load(config)
    log.info("%s", served.describe())
    settings = {
        "host": config.host,
        "port": config.port,
        "limit_concurrency": config.limit_concurrency,
        "log_level": config.log_level,
    }
    if config.workers == 1:
        uvicorn.run(create_app(config, served), **settings)
        return
    # uvicorn starts each worker from an import string, and each loads its own outputs:
    # these were loaded only to refuse a stale catalog with one line.
    del served
    os.environ[CONFIG_VARIABLE] = config.to_json()
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=config.workers, **settings)
