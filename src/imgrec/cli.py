"""The query command: recommend catalog items for any image, or classify it, with the trained model.

    imgrec recommend PATH_OR_URL... [--top-k 5] [--out fig.png] [--json]
    imgrec classify PATH_OR_URL... [--json]

Queries go through the pipeline's own code: `images.decode` (as prepare),
`inference.embed` / `inference.predict_logits` (as embed and evaluate) and
`neighbors.ExactIndex` (as recommend), so a catalog image given as a query
finds itself first with score 1.0.

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
import re
import socket
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imgrec.errors import ImgrecError, MissingOutput, first_line

# torch, fsspec, scikit-learn and matplotlib load inside the commands that need them,
# so `--help` and argument errors answer at once instead of after seconds of imports.
if TYPE_CHECKING:
    import numpy as np
    import torch

    from imgrec.catalog import Catalog
    from imgrec.checkpoint import Checkpoint

# Relative to the repository root (the folder holding dvc.yaml): where dvc.yaml writes them.
DEFAULT_MODEL = "models/model.pt"
DEFAULT_CATALOG = "data/embeddings"
DEFAULT_PREPARED = "data/prepared"


@dataclass(frozen=True)
class Neighbor:
    rank: int
    row_id: int
    label: str
    score: float


def has_dvc_remote(root: Path | None = None) -> bool:
    """Whether the project's DVC config (shared or local) names a remote to pull from."""
    root = root or find_repo_root()
    for name in ("config", "config.local"):
        try:
            text = (root / ".dvc" / name).read_text()
        except OSError:
            continue
        if re.search(r"^\s*\[\s*'?\"?remote\s", text, flags=re.MULTILINE):
            return True
    return False


def find_repo_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding dvc.yaml, else `start`."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return start


class UnusableQuery(ImgrecError):
    """A query image that cannot be read or decoded; `reason` says why without naming it."""

    def __init__(self, source: str, reason: str):
        reason = first_line(reason).rstrip(".")
        super().__init__(f"{source}: {reason}.")
        self.source = source
        self.reason = reason


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, then what it was raised from, down to the first cause."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _describe(error: BaseException) -> str:
    """An exception in a few words: `Connection refused`, not `[Errno 111] ...: '/a/b'`."""
    if isinstance(error, OSError) and isinstance(error.errno, int) and error.errno > 0:
        return os.strerror(error.errno)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror  # socket.gaierror: `Name or service not known`
    return str(error) or type(error).__name__


def _read_failure(error: Exception) -> str:
    """Why fsspec could not read a source.

    fsspec's HTTP backend reports every failure, a refused connection included,
    as FileNotFoundError; what really happened is in the exceptions it wraps.
    """
    chain = list(_chain(error))
    for cause in chain:
        status = getattr(cause, "status", None)  # an HTTP response (aiohttp's ClientResponseError)
        if isinstance(status, int) and status >= 400:
            if status == 404:
                return "not found (HTTP 404)"
            return f"HTTP {status} {getattr(cause, 'message', '')}".rstrip()
    if any(isinstance(c, ConnectionError | TimeoutError | socket.gaierror) for c in chain):
        return f"could not connect ({_describe(chain[-1])})"
    if isinstance(error, FileNotFoundError):
        return "not found"
    return _describe(error)


def read_image(source: str) -> bytes:
    """The bytes of a local file or of any fsspec URL (https://, s3://, hf://, ...)."""
    import fsspec

    try:
        with fsspec.open(source, "rb") as handle:
            return handle.read()
    except Exception as error:
        # Each fsspec backend raises its own types (aiohttp, botocore, huggingface_hub, ...).
        raise UnusableQuery(source, _read_failure(error)) from error


def load_image(source: str, img_size: int) -> np.ndarray:
    """(img_size, img_size, 3) uint8: the source decoded exactly as prepare decodes it."""
    from imgrec.images import SkippedImage, decode

    data = read_image(source)
    try:
        return decode(data, img_size)
    except SkippedImage as skipped:
        detail = str(skipped)
        why = skipped.reason if detail == skipped.reason else f"{skipped.reason}: {detail}"
        raise UnusableQuery(source, f"not a usable image ({why})") from skipped


def load_images(
    sources: Sequence[str], img_size: int
) -> tuple[np.ndarray, dict[int, UnusableQuery]]:
    """(Q, S, S, 3) uint8 images of the sources that could be used, in order; why each other
    one could not, by its position in `sources`.
    """
    import numpy as np

    decoded, failed = [], {}
    for position, source in enumerate(sources):
        try:
            decoded.append(load_image(source, img_size))
        except UnusableQuery as unusable:
            failed[position] = unusable
    if not decoded:
        return np.empty((0, img_size, img_size, 3), np.uint8), failed
    return np.stack(decoded), failed


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


def check_catalog(model_path: Path, catalog: Catalog) -> None:
    """Refuse a catalog that was not embedded by this very checkpoint file."""
    from imgrec.checkpoint import checkpoint_md5

    if catalog.model_md5 != checkpoint_md5(model_path):
        raise ImgrecError(
            "the catalog was not made by this model; run `dvc repro` to bring them in step."
        )


def search(catalog: Catalog, queries: np.ndarray, top_k: int) -> list[list[Neighbor]]:
    """The top-k catalog items for each query embedding, best first."""
    from imgrec.neighbors import ExactIndex

    scores, positions = ExactIndex().fit(catalog.embeddings).search(queries, top_k)  # (Q, k)
    return [
        [
            Neighbor(
                rank=rank,
                row_id=int(catalog.row_ids[p]),
                label=catalog.class_names[catalog.labels[p]],
                score=round(float(s), 6),  # float32 holds about 7 digits
            )
            for rank, (p, s) in enumerate(zip(row_positions, row_scores, strict=True), start=1)
        ]
        for row_positions, row_scores in zip(positions, scores, strict=True)
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


def _load_model(args: argparse.Namespace) -> tuple[Checkpoint, torch.device]:
    from imgrec.checkpoint import load_checkpoint
    from imgrec.runtime import pick_device

    device = pick_device(args.device)
    return load_checkpoint(args.model, device), device


@dataclass(frozen=True)
class Novelty:
    """Whether a query is unlike every catalog image (see `imgrec.catalog`, calibration)."""

    no_close_match: bool
    appearance_similarity: float  # cosine to the most alike catalog item
    threshold: float

    def note(self) -> str:
        from imgrec.catalog import NOVELTY_QUANTILE

        return (
            f"no close match: unlike every catalog image (appearance similarity "
            f"{self.appearance_similarity:.3f} < {self.threshold:.3f}, which "
            f"{1 - NOVELTY_QUANTILE:.0%} of validation images exceed with their nearest "
            "training image)"
        )


def novelty(catalog: Catalog, appearance: np.ndarray) -> list[Novelty]:
    """Each query's appearance against the catalog's threshold."""
    closest = catalog.closest_appearance(appearance)
    threshold = catalog.no_close_match_below
    return [Novelty(bool(c < threshold), round(float(c), 6), threshold) for c in closest]


def _why_unwritable(path: Path, error: OSError) -> str:
    if path.is_dir():
        return "it is a folder"
    blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        return f"{blocking} is a file, not a folder"
    return _describe(error)


def write_figure(
    path: str,
    catalog: Catalog,
    sources: Sequence[str],
    images: np.ndarray,
    results: list[list[Neighbor]],
) -> None:
    """Each query beside its top-k, as the figure stage draws them, in the format `path` names."""
    import numpy as np

    from imgrec.figures import neighbor_title, recommendation_figure, save_figure

    positions = [catalog.positions(np.array([n.row_id for n in r])) for r in results]
    figure = recommendation_figure(
        list(images),
        [f"query\n{_source_name(s)}" for s in sources],
        [[catalog.images[p] for p in row] for row in positions],
        [[neighbor_title(n.label, n.score) for n in r] for r in results],
    )
    try:
        save_figure(figure, path)
    except OSError as error:
        raise ImgrecError(f"cannot write {path}: {_why_unwritable(Path(path), error)}.") from error


def cmd_recommend(args: argparse.Namespace) -> int:
    from imgrec.catalog import load_catalog
    from imgrec.inference import catalog_vectors

    checkpoint, device = _load_model(args)
    catalog = load_catalog(args.catalog, args.prepared)
    check_catalog(args.model, catalog)
    catalog_size = len(catalog.row_ids)
    if args.top_k > catalog_size:
        raise ImgrecError(f"--top-k {args.top_k} is more than the {catalog_size} catalog items.")
    sources, images, failed = _load_queries(args.images, checkpoint.img_size)
    queries, appearance = catalog_vectors(
        checkpoint.model, images, batch_size=args.batch_size, device=device
    )
    results = search(catalog, queries, args.top_k)
    novel = novelty(catalog, appearance)

    try:
        if args.json:
            answers = [
                {
                    "query": s,
                    "no_close_match": n.no_close_match,
                    "appearance_similarity": n.appearance_similarity,
                    "results": [vars(neighbor) for neighbor in r],
                }
                for s, n, r in zip(sources, novel, results, strict=True)
            ]
            print(json.dumps(_in_given_order(args.images, answers, failed, "query"), indent=2))
        else:
            for number, (source, n, neighbors) in enumerate(
                zip(sources, novel, results, strict=True)
            ):
                if number:
                    print()
                print(f"{source}: top {args.top_k} of {catalog_size} catalog items")
                if n.no_close_match:
                    print(n.note())
                rows = [(str(n.rank), str(n.row_id), n.label, f"{n.score:.4f}") for n in neighbors]
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
    return 1 if failed else 0


def cmd_classify(args: argparse.Namespace) -> int:
    from imgrec.catalog import load_catalog
    from imgrec.inference import embed, predict_logits

    checkpoint, device = _load_model(args)
    sources, images, failed = _load_queries(args.images, checkpoint.img_size)
    logits = predict_logits(checkpoint.model, images, batch_size=args.batch_size, device=device)
    probabilities, classes = logits.softmax(dim=1).max(dim=1)
    try:
        catalog = load_catalog(args.catalog, args.prepared)
        check_catalog(args.model, catalog)
        appearance = embed(checkpoint.model, images, space="appearance", device=device)
        novel = [n.no_close_match for n in novelty(catalog, appearance)]
    except ImgrecError as error:  # a classifier needs no catalog; the flag does
        print(f"warning: no novelty check ({first_line(error)})", file=sys.stderr)
        novel = [None] * len(sources)
    predictions = [
        {
            "image": source,
            "label": checkpoint.class_names[c],
            "probability": round(p, 6),
            "no_close_match": n,
        }
        for source, c, p, n in zip(
            sources, classes.tolist(), probabilities.tolist(), novel, strict=True
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
    return 1 if failed else 0


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

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "images",
        nargs="+",
        metavar="PATH_OR_URL",
        help="image file(s): local paths or fsspec URLs (https://, s3://, hf://, ...)",
    )
    common.add_argument(
        "--model",
        metavar="FILE",
        help=f"model checkpoint from the train stage (default: {DEFAULT_MODEL})",
    )
    common.add_argument(
        "--device",
        default="auto",
        metavar="DEVICE",
        help="auto (CUDA when present), cpu, cuda or cuda:N",
    )
    common.add_argument(
        "--batch-size",
        type=_positive_int,
        metavar="N",
        default=256,
        help="images per forward pass (default: 256)",
    )
    common.add_argument(
        "--catalog",
        metavar="DIR",
        help=f"embeddings folder from the embed stage (default: {DEFAULT_CATALOG})",
    )
    common.add_argument(
        "--prepared",
        metavar="DIR",
        help=f"prepared dataset folder from the prepare stage (default: {DEFAULT_PREPARED})",
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

    machine = commands.add_parser(
        "machine",
        help="where queries compute: CPU, kernels in force, threads, versions",
        description="Print the CPU, the kernels torch and BLAS use (portable unless "
        "IMGREC_KERNELS=native), threads and versions: what to paste into a bug report.",
    )
    machine.set_defaults(run=cmd_machine, images=[])
    return parser


def resolve_defaults(args: argparse.Namespace, root: Path) -> None:
    """Unset paths become the pipeline's outputs under `root`; given paths stay as typed."""
    for name, default in (
        ("model", DEFAULT_MODEL),
        ("catalog", DEFAULT_CATALOG),
        ("prepared", DEFAULT_PREPARED),
    ):
        if getattr(args, name, None) is None:
            setattr(args, name, root / default)


# 128 + SIGPIPE: what the shell reports for a tool that SIGPIPE ended (`seq 1e6 | head -1`
# under `set -o pipefail`), so a script can tell "the reader left early" from a real failure
# (1); Python's docs suggest 1, which would blur the two.
EXIT_BROKEN_PIPE = 141


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
        return 1
    except ImgrecError as error:
        print(f"error: {first_line(error)}", file=sys.stderr)
        return 1
    except OSError as error:  # the machine's, not the input's: disk full, permissions, ...
        where = f" ({error.filename})" if error.filename else ""
        print(f"error: {_describe(error)}{where}.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    except Exception as error:
        if os.environ.get("IMGREC_DEBUG"):
            raise
        print(
            f"error: unexpected {type(error).__name__}: {first_line(error)} "
            "(a bug: rerun with IMGREC_DEBUG=1 for the traceback and report it).",
            file=sys.stderr,
        )
        return 1
    return code
