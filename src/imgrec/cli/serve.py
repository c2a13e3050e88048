"""`imgrec serve`: the HTTP API and the page (`imgrec.server`)."""

import argparse
import logging
import os
from pathlib import Path

from imgrec.cli.common import positive_int
from imgrec.serving.query import (
    DEFAULT_AUDIT,
    DEFAULT_CATALOG_MAP,
    DEFAULT_CORRECTIONS,
    DEFAULT_HASHES,
    DEFAULT_RECOMMENDATIONS,
    find_repo_root,
)


def add_parser(commands, parents: dict[str, argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        parents=[parents["outputs"]],
        help="an HTTP API and a page for the recommender (FastAPI on uvicorn)",
        description="Load the pipeline's outputs once and answer over HTTP with the query "
        "commands' own code (the same bits as --json for one image): a JSON API under /api, "
        "documented at /docs, and a page at / to browse the catalog and search it with an "
        "image. Localhost only unless a token is set or --no-token is given.",
    )
    _add_binding(serve)
    _add_limits(serve)
    _add_inputs(serve)
    serve.set_defaults(run=run)


def _add_binding(serve: argparse.ArgumentParser) -> None:
    """Where it listens, with how many workers, and who may call it."""
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only); any other needs "
        "a token or --no-token",
    )
    serve.add_argument(
        "--port", type=positive_int, default=8000, help="port to bind (default: 8000)"
    )
    serve.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="worker processes, each with its own copy of the model and catalog (default: 1)",
    )
    access = serve.add_mutually_exclusive_group()
    access.add_argument(
        "--token",
        help="require `Authorization: Bearer TOKEN` on every API call (default: the "
        "IMGREC_TOKEN variable, which other users cannot read from the process list)",
    )
    access.add_argument(
        "--no-token",
        action="store_true",
        help="serve another host than localhost without a token, on purpose",
    )


def _add_limits(serve: argparse.ArgumentParser) -> None:
    """What a request may send and how many may run at once."""
    serve.add_argument(
        "--max-upload-mb",
        type=float,
        default=20.0,
        metavar="MB",
        help="refuse larger uploads with 413 before reading them (default: 20)",
    )
    serve.add_argument(
        "--max-decoded-mb",
        type=float,
        default=256.0,
        metavar="MB",
        help="refuse with 413, from its header, an image whose decode would hold more "
        "memory than this: width x height x the bytes per pixel of its mode and of its "
        "conversion to RGB (4 for RGB, 9 for 16-bit grey, 20 with alpha) (default: 256)",
    )
    serve.add_argument(
        "--limit-concurrency",
        type=positive_int,
        default=64,
        metavar="N",
        help="requests in progress at once per worker before new ones get 503; idle "
        "connections do not count, and time out (default: 64)",
    )
    serve.add_argument(
        "--allowed-hosts",
        default="",
        metavar="NAMES",
        help="comma-separated Host names to answer besides the bound address and, on "
        "localhost, its names (e.g. the name a proxy or DNS gives this machine; * for any); "
        "any other Host gets 400",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="uvicorn's log level (default: info)",
    )


def _add_inputs(serve: argparse.ArgumentParser) -> None:
    """The pipeline's outputs it serves besides the model and catalog, and the review."""
    serve.add_argument(
        "--recommendations",
        metavar="FILE",
        help="every item's stored top-k from the recommend stage "
        f"(default: {DEFAULT_RECOMMENDATIONS})",
    )
    serve.add_argument(
        "--audit",
        metavar="FILE",
        type=Path,
        help="the audit's report: its flags for each item, and its duplicate groups, "
        f"collapsed in the results as recommend does (default: {DEFAULT_AUDIT} when --catalog "
        "is the default too; none there: no flags and no collapsing)",
    )
    serve.add_argument(
        "--hashes",
        metavar="FILE",
        type=Path,
        help=f"the prepared images' hashes, to tell a query that duplicates a catalog item "
        f"(default: {DEFAULT_HASHES})",
    )
    serve.add_argument(
        "--map",
        metavar="FILE",
        type=Path,
        help=f"the catalog's 2-D map, drawn in the page (default: {DEFAULT_CATALOG_MAP} when "
        "--catalog is the default too; none there: the page shows no map)",
    )
    serve.add_argument(
        "--review",
        action="store_true",
        help="let the page write review decisions to the corrections file (default: the page "
        "shows the review read-only); off localhost this needs a token",
    )
    serve.add_argument(
        "--corrections",
        metavar="FILE",
        type=Path,
        help=f"the corrections file that --review writes (default: {DEFAULT_CORRECTIONS})",
    )


def run(args: argparse.Namespace) -> int:
    from imgrec.server import ServeConfig, serve

    root = find_repo_root()
    model = Path(args.model).resolve()
    config = ServeConfig(
        model=Path(args.model),
        catalog=Path(args.catalog),
        prepared=Path(args.prepared),
        recommendations=Path(args.recommendations),
        audit=args.audit,  # Paths (type=Path) or None
        hashes=args.hashes,
        catalog_map=args.map,
        corrections=args.corrections,
        review=args.review,
        model_name=str(model.relative_to(root) if model.is_relative_to(root) else model.name),
        device=args.device,
        host=args.host,
        port=args.port,
        workers=args.workers,
        token=args.token if args.token is not None else os.environ.get("IMGREC_TOKEN") or None,
        no_token=args.no_token,
        max_upload_mb=args.max_upload_mb,
        max_decoded_mb=args.max_decoded_mb,
        limit_concurrency=args.limit_concurrency,
        allowed_hosts=tuple(filter(None, (h.strip() for h in args.allowed_hosts.split(",")))),
        log_level=args.log_level,
    )
    logging.getLogger("imgrec.server").setLevel(logging.INFO)  # its one line on what it serves
    serve(config)
    return 0
