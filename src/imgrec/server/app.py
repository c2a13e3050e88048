"""The app factory: the guards, the routers, the page and the error answers, put together."""

from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from imgrec.data.images import FORMATS
from imgrec.errors import ImgrecError, first_line
from imgrec.server import api, events, page, review
from imgrec.server.config import ServeConfig
from imgrec.server.guards import HostRule, RequestGuard, token_check
from imgrec.server.state import Served, ServedState
from imgrec.serving.query import UnknownItem, UnusableQuery

# The routers under /api, each behind the token when one is set. A new room of the API is
# one more entry here: its routes take the served state with `Depends(state.served)`, and
# get the guards (host, cross-site, limits) and the JSON error answers with the rest.
API_ROUTERS: list[APIRouter] = [api.router, review.router]


def create_app(config: ServeConfig, served: Served | None = None) -> FastAPI:
    """The app over `served` (loaded from `config` when not given), reloaded when the
    outputs are rebuilt (`state.ServedState`, in `app.state.served`)."""
    state = ServedState(config, served or Served.load(config))

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.start()  # in the worker process that serves, not in the one that made the app
        yield
        state.stop()

    app = FastAPI(
        lifespan=lifespan,
        title="imgrec",
        summary="More like this, and the class, for any image, from the pipeline's outputs.",
        description="Answers are the same bits as `python -m imgrec recommend --json` and "
        "`classify --json` give for one image. The page at `/` browses the catalog.",
    )
    app.state.config = config
    app.state.served = state
    app.add_middleware(
        RequestGuard,
        max_bytes=config.max_upload_bytes,
        hosts=HostRule(config.host, config.allowed_hosts),
        limit_concurrency=config.limit_concurrency,
    )
    token = [Depends(token_check(config.token))] if config.token else []
    for router in API_ROUTERS:
        app.include_router(router, prefix="/api", dependencies=token)
    app.include_router(page.router)
    app.mount("/static", page.static_files(), name="static")
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
            events.record("too_large", request.client, f"an upload {error.reason} refused")
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
