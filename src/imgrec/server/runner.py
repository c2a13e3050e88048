"""uvicorn around the app: one process, or `--workers` processes that each load their own."""

import logging
import os

from fastapi import FastAPI

from imgrec.server.app import create_app
from imgrec.server.config import ServeConfig
from imgrec.server.state import Served

log = logging.getLogger(__name__)

# A worker process that uvicorn starts (--workers > 1) reads its config from here.
CONFIG_VARIABLE = "IMGREC_SERVE_CONFIG"


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
