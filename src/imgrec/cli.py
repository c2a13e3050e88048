"""The query command: recommend catalog items for any image, or classify it, with the trained model.

    imgrec recommend PATH_OR_URL... [--top-k 5] [--out fig.png] [--json]
    imgrec classify PATH_OR_URL... [--json]
    imgrec serve [--host 127.0.0.1] [--port 8000] [--workers 1] [--token T | --no-token]

Only the command line: every answer comes from `query.Recommender`, the API the
server (`imgrec.server`, which `serve` starts) calls too, which runs the pipeline's
own code (prepare's decoder, embed's vectors, recommend's exact search), so a
catalog image given as a query finds itself first with score 1.0.

Every failure is one `error:` line on stderr, never a traceback (IMGREC_DEBUG=1
shows a bug's). In a batch, a query that cannot be read or decoded is skipped
with one `warning:` line and the others are answered; `--json` keeps one entry
per query in the order given, a skipped one as {"query" (or "image"): ...,
"error": why}, so entries line up with the arguments. Exit status: 0 when every
query was answered; 1 when any failed or `--out` could not be written (the
results are printed first); 141 when the reader of stdout left early (`| head`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imgrec.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    ImgrecError,
    MissingOutput,
    first_line,
)
from imgrec.query import (
    DEFAULT_AUDIT,
    DEFAULT_CATALOG,
    DEFAULT_CATALOG_MAP,
    DEFAULT_CORRECTIONS,
    DEFAULT_HASHES,
    DEFAULT_MODEL,
    DEFAULT_PREPARED,
    DEFAULT_RECOMMENDATIONS,
    Recommender,
    UnusableQuery,
    classify_answer,
    describe,
    find_repo_root,
    has_dvc_remote,
    load_images,
    recommend_answer,
)

# torch, fsspec, scikit-learn and matplotlib load inside the commands that need them,
# so `--help` and argument errors answer at once instead of after seconds of imports.
if TYPE_CHECKING:
    import numpy as np

    from imgrec.catalog import Catalog
    from imgrec.query import Neighbor


def _load_queries(
    sources: Sequence[str], img_size: int
) -> tuple[list[str], np.ndarray, dict[int, UnusableQuery]]:
    """`load_images`, plus the sources answered; a warning per skipped one; none is an error."""
    images, failed = load_images(sources, img_size)
    if len(sources) == 1 and failed:
        raise failed[0]
    for unusable in failed.values():
        print(f"warning: {unusable.source} skipped: {unusable.reason}.", file=sys.stderr)
    if len(failed) == len(sources):
        raise ImgrecError(f"none of the {len(sources)} images could be used.")
    answered = [s for position, s in enumerate(sources) if position not in failed]
    return answered, images, failed


def _in_given_order(
    sources: Sequence[str], answers: Sequence[dict], failed: dict[int, UnusableQuery], key: str
) -> list[dict]:
    """One JSON entry per source, as given: its answer, or `{key: source, "error": why}`."""
    remaining = iter(answers)
    return [
        {key: source, "error": failed[position].reason} if position in failed else next(remaining)
        for position, source in enumerate(sources)
    ]


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """Columns padded to their widest cell; `align` has one `l` or `r` per column."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(
            cell.ljust(width) if side == "l" else cell.rjust(width)
            for cell, width, side in zip(cells, widths, align, strict=True)
        ).rstrip()
        for cells in (header, *rows)
    )


def _source_name(source: str) -> str:
    return source.rstrip("/").rsplit("/", 1)[-1] or source


def _why_unwritable(path: Path, error: OSError) -> str:
    if path.is_dir():
        return "it is a folder"
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        return f"{blocking} is a file, not a folder"
    return describe(error)


def write_figure(
    path: str,
    catalog: Catalog,
    sources: Sequence[str],
    images: np.ndarray,
    results: list[list[Neighbor]],
) -> None:
    """Each query beside its top-k, as the figure stage draws them, in the format `path` names."""
    import numpy as np

    from imgrec.plotting import neighbor_title, recommendation_figure, save_figure

    positions = [catalog.positions(np.array([n.row_id for n in r])) for r in results]
    figure = recommendation_figure(
        list(images),
        [f"query\n{_source_name(s)}" for s in sources],
        [[catalog.images[p] for p in row] for row in positions],
        [[neighbor_title(n.label or "unlabeled", n.score) for n in r] for r in results],
    )
    try:
        save_figure(figure, path)
    except OSError as error:
        raise ImgrecError(f"cannot write {path}: {_why_unwritable(Path(path), error)}.") from error


def cmd_recommend(args: argparse.Namespace) -> int:
    recommender = Recommender.load(args.model, args.catalog, args.prepared, args.device,
                                   audit=args.audit, hashes=args.hashes)  # fmt: skip
    catalog, catalog_size = recommender.catalog, len(recommender.catalog.row_ids)
    recommender.check_top_k(args.top_k)
    sources, images, failed = _load_queries(args.images, recommender.img_size)
    results, novel, copies = recommender.recommend(images, args.top_k, args.batch_size)

    try:
        if args.json:
            answers = [
                recommend_answer(s, r, n, c)
                for s, n, r, c in zip(sources, novel, results, copies, strict=True)
            ]
            print(json.dumps(_in_given_order(args.images, answers, failed, "query"), indent=2))
        else:
            for number, (source, n, neighbors, c) in enumerate(
                zip(sources, novel, results, copies, strict=True)
            ):
                if number:
                    print()
                print(f"{source}: top {args.top_k} of {catalog_size} catalog items")
                if n.no_close_match:
                    print(n.note())
                if c:
                    shown = ", ".join(map(str, c[:10])) + (", ..." if len(c) > 10 else "")
                    print(f"duplicates catalog item(s) {shown} (left out of the results)")
                rows = [(str(n.rank), str(n.row_id), n.label or "-", f"{n.score:.4f}")
                        for n in neighbors]  # fmt: skip
                print(format_table(("rank", "row_id", "label", "score"), rows, align="rrlr"))
        sys.stdout.flush()  # the results are out before the figure can fail
    except BrokenPipeError:
        if args.out:  # the reader left early (`| head`); the figure was asked for all the same
            write_figure(args.out, catalog, sources, images, results)
        raise
    if args.out:
        write_figure(args.out, catalog, sources, images, results)
        if not args.json:
            print(f"figure: {args.out}")
    return EXIT_FAILED if failed else 0


def cmd_classify(args: argparse.Namespace) -> int:
    recommender = Recommender.load(
        args.model, args.catalog, args.prepared, args.device, need_catalog=False
    )
    if recommender.catalog is None:  # a classifier needs no catalog; the flag does
        print(f"warning: no novelty check ({recommender.why_no_catalog})", file=sys.stderr)
    sources, images, failed = _load_queries(args.images, recommender.img_size)
    predictions = [
        classify_answer(source, *prediction)
        for source, prediction in zip(
            sources, recommender.classify(images, args.batch_size), strict=True
        )
    ]
    if args.json:
        print(json.dumps(_in_given_order(args.images, predictions, failed, "image"), indent=2))
    else:
        flag = {True: "no close match", False: "", None: "?"}
        rows = [
            (p["image"], p["label"], f"{p['probability']:.4f}", flag[p["no_close_match"]])
            for p in predictions
        ]
        print(format_table(("image", "label", "probability", "catalog"), rows, align="llrl"))
    return EXIT_FAILED if failed else 0


def cmd_serve(args: argparse.Namespace) -> int:
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
        limit_concurrency=args.limit_concurrency,
        log_level=args.log_level,
    )
    logging.getLogger("imgrec.server").setLevel(logging.INFO)  # its one line on what it serves
    serve(config)
    return 0


def cmd_machine(args: argparse.Namespace) -> int:
    import torch  # noqa: F401 - loaded so the line can say which kernels it uses

    from imgrec import kernels

    print(kernels.machine_line())
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgrec",
        description="Query the trained model: similar catalog items for any image, or its class.",
        epilog="Relative default paths are taken from the repository root (the nearest folder "
        "above the current one that holds dvc.yaml). Produce them with `dvc repro`, or `dvc pull` "
        "them where the project has a DVC remote.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # The pipeline's outputs, which every command but `machine` loads.
    outputs = argparse.ArgumentParser(add_help=False)
    outputs.add_argument(
        "--model",
        metavar="FILE",
        help=f"model checkpoint from the train stage (default: {DEFAULT_MODEL})",
    )
    outputs.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="auto (CUDA when present), cpu, cuda or cuda:N",
    )
    outputs.add_argument(
        "--catalog",
        metavar="DIR",
        help=f"embeddings folder from the embed stage (default: {DEFAULT_CATALOG})",
    )
    outputs.add_argument(
        "--prepared",
        metavar="DIR",
        help=f"the catalog's prepared images, from prepare_catalog (default: {DEFAULT_PREPARED})",
    )

    common = argparse.ArgumentParser(add_help=False, parents=[outputs])
    common.add_argument(
        "images",
        nargs="+",
        metavar="PATH_OR_URL",
        help="image file(s): local paths or fsspec URLs (https://, s3://, hf://, ...)",
    )
    common.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        default=256,
        help="images per forward pass (default: 256)",
    )
    common.add_argument(
        "--json",
        action="store_true",
        help="print machine-readable JSON instead of a table: one entry per image, in order; "
        'an image that could not be used has an "error" field instead of its answer',
    )

    recommend = commands.add_parser(
        "recommend",
        parents=[common],
        help="the catalog items most similar to each image",
        description="Print the top-k most similar catalog items (row id, label, cosine score) "
        "for each image, embedded exactly as the pipeline embeds its catalog, and say when an "
        "image is unlike every catalog image (no close match: its appearance is less like its "
        "nearest catalog image than 99%% of validation images are like their nearest training "
        "image).",
    )
    recommend.add_argument(
        "--top-k",
        type=_positive_int,
        metavar="K",
        default=5,
        help="how many similar items per image (default: 5)",
    )
    recommend.add_argument(
        "--audit",
        metavar="FILE",
        type=Path,
        help=f"the audit's report, whose duplicate groups are collapsed in the results, as "
        f"recommend does (default: {DEFAULT_AUDIT} when --catalog is the default too; none "
        "there: no collapsing)",
    )
    recommend.add_argument(
        "--hashes",
        metavar="FILE",
        type=Path,
        help=f"the prepared images' hashes, to tell a query that duplicates a catalog item "
        f"(default: {DEFAULT_HASHES})",
    )
    recommend.add_argument(
        "--out",
        metavar="FILE",
        help="also write a figure of each query beside its top-k, as the figure stage does, "
        "after printing the results; its extension picks the format: .png, .pdf, .svg, .jpg "
        "(PNG for any other)",
    )
    recommend.set_defaults(run=cmd_recommend)

    classify = commands.add_parser(
        "classify",
        parents=[common],
        help="the predicted class of each image",
        description="Print the predicted class name and its probability for each image, and "
        "flag an image unlike every catalog image (no close match): a confident class for "
        "such an image means little. The flag needs the catalog (--catalog, --prepared).",
    )
    classify.set_defaults(run=cmd_classify)

    serve = commands.add_parser(
        "serve",
        parents=[outputs],
        help="an HTTP API and a page for the recommender (FastAPI on uvicorn)",
        description="Load the pipeline's outputs once and answer over HTTP with the query "
        "commands' own code (the same bits as --json for one image): a JSON API under /api, "
        "documented at /docs, and a page at / to browse the catalog and search it with an "
        "image. Localhost only unless a token is set or --no-token is given.",
    )
    serve.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only); any other needs "
        "a token or --no-token",
    )
    serve.add_argument(
        "--port", type=_positive_int, default=8000, help="port to bind (default: 8000)"
    )
    serve.add_argument(
        "--workers",
        type=_positive_int,
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
    serve.add_argument(
        "--max-upload-mb",
        type=float,
        default=20.0,
        metavar="MB",
        help="refuse larger uploads with 413 before reading them (default: 20)",
    )
    serve.add_argument(
        "--limit-concurrency",
        type=_positive_int,
        default=64,
        metavar="N",
        help="connections at once per worker before new ones get 503 (default: 64)",
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug", "trace"],
        help="uvicorn's log level (default: info)",
    )
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
        help="let the page write review decisions to the corrections file (default: the "
        "page shows the review read-only); off localhost this needs a token",
    )
    serve.add_argument(
        "--corrections",
        metavar="FILE",
        type=Path,
        help=f"the corrections file that --review writes (default: {DEFAULT_CORRECTIONS})",
    )
    serve.set_defaults(run=cmd_serve)

    machine = commands.add_parser(
        "machine",
        help="where queries compute: CPU, kernels in force, threads, versions",
        description="Print the CPU, the kernels torch and BLAS use (portable unless "
        "IMGREC_KERNELS=native), threads and versions: what to paste into a bug report.",
    )
    machine.set_defaults(run=cmd_machine, images=[])
    return parser


def resolve_defaults(args: argparse.Namespace, root: Path) -> None:
    """Unset paths become the pipeline's outputs under `root`; given paths stay as typed.
    The audit's report and the image hashes describe the pipeline's catalog, so they
    default to its outputs only when the catalog does too (else: none, no collapsing)."""
    defaults = [
        ("model", DEFAULT_MODEL),
        ("catalog", DEFAULT_CATALOG),
        ("prepared", DEFAULT_PREPARED),
        ("recommendations", DEFAULT_RECOMMENDATIONS),
    ]
    if getattr(args, "catalog", None) is None:
        defaults += [("audit", DEFAULT_AUDIT), ("hashes", DEFAULT_HASHES)]
        if "map" in vars(args):  # serve's own
            defaults.append(("map", DEFAULT_CATALOG_MAP))
    if "corrections" in vars(args):
        defaults.append(("corrections", DEFAULT_CORRECTIONS))
    for name, default in defaults:
        if getattr(args, name, None) is None:
            setattr(args, name, root / default)


def _quiet_stdout() -> None:
    """Point stdout at devnull, as Python's docs advise, so the exit flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout with no file behind it (tests) has nothing to flush
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resolve_defaults(args, find_repo_root())
    # Stdout carries the results (maybe JSON); anything a library logs goes to stderr.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    try:
        code = args.run(args)
        sys.stdout.flush()  # a reader that left early shows here when the output fit the buffer
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except MissingOutput as error:
        pull = " Or `dvc pull` it: this project has a DVC remote." if has_dvc_remote() else ""
        print(f"error: {first_line(error)}{pull}", file=sys.stderr)
        return EXIT_FAILED
    except ImgrecError as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as error:  # the machine's, not the input's: disk full, permissions, ...
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: {describe(error)}{where}.", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        if os.environ.get("IMGREC_DEBUG"):
            raise
        print(
            f"error: unexpected {type(error).__name__}: {first_line(error)} "
            "(a bug: rerun with IMGREC_DEBUG=1 for the traceback and report it).",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return code
