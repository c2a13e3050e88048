"""uvicorn around the app: one process, or `--workers` processes that each load their own."""

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor

from fastapi import FastAPI

from imgrec.server.app import create_app
from imgrec.server.config import ServeConfig
from imgrec.server.protocol import GuardedH11Protocol
from imgrec.server.state import Served

log = logging.getLogger(__name__)

# A worker process that uvicorn starts (--workers > 1) reads its config from here.
CONFIG_VARIABLE = "IMGREC_SERVE_CONFIG"
# On SIGTERM or Ctrl-C: requests in progress get this long to finish, then are cancelled,
# so a stalled client cannot hold a restart (and the body timeouts end most before).
GRACEFUL_SHUTDOWN_S = 5
# After a response, how long a kept-alive connection may idle (uvicorn's default too).
KEEP_ALIVE_S = 5


def worker_app() -> FastAPI:
    """The app in a worker process that uvicorn started (`--workers` > 1)."""
    return create_app(ServeConfig.from_json(os.environ[CONFIG_VARIABLE]))


def serve(config: ServeConfig) -> None:
    """Load and check the outputs (an ImgrecError before any port opens), then run uvicorn
    until Ctrl-C or SIGTERM."""
    import uvicorn

    settings = {
        "host": config.host,
        "port": config.port,
        # Not uvicorn's limit_concurrency, which counts idle connections too: `guards`
        # limits requests in progress, and `protocol` times out idle connections.
        "http": GuardedH11Protocol,
        "timeout_keep_alive": KEEP_ALIVE_S,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_S,
        "log_level": config.log_level,
    }
    if config.workers == 1:
        served = Served.load(config)
        log.info("%s", served.describe())
        uvicorn.run(create_app(config, served), **settings)
        return
    # uvicorn starts each worker from an import string, and each loads its own outputs.
    # The parent only checks them, in a process of its own, so it never holds a model and
    # a catalog beside its workers' copies.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as checker:
        log.info("%s", checker.submit(describe_outputs, config).result())
    os.environ[CONFIG_VARIABLE] = config.to_json()
    uvicorn.run(f"{__name__}:worker_app", factory=True, workers=config.workers, **settings)


def describe_outputs(config: ServeConfig) -> str:
    """What `config` would serve, or the ImgrecError that stops it (in a checker process)."""
    return Served.load(config).describe()
