"""The query command: recommend catalog items for any image, or classify it, with the trained model.

    imgrec recommend PATH_OR_URL... [--top-k 5] [--out fig.png] [--json]
    imgrec classify PATH_OR_URL... [--json]

Queries go through the pipeline's own code: `images.decode` (as prepare),
`inference.embed` / `inference.predict_logits` (as embed and evaluate) and
`neighbors.ExactIndex` (as recommend), so a catalog image given as a query
finds itself first with score 1.0.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imgrec.errors import ImgrecError

# torch, dask, scikit-learn and matplotlib load inside the commands that need them,
# so `--help` and argument errors answer at once instead of after seconds of imports.
if TYPE_CHECKING:
    import numpy as np
    import torch

    from imgrec.catalog import Catalog
    from imgrec.model import CNNClassifier

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


def find_repo_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding dvc.yaml, else `start`."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return start


def read_image(source: str) -> bytes:
    """The bytes of a local file or of any fsspec URL (https://, s3://, hf://, ...)."""
    import fsspec

    try:
        with fsspec.open(source, "rb") as handle:
            return handle.read()
    except FileNotFoundError as error:
        raise ImgrecError(f"cannot read {source}: not found.") from error
    except Exception as error:
        # Each fsspec backend raises its own types (aiohttp, botocore, huggingface_hub, ...).
        raise ImgrecError(f"cannot read {source}: {error or type(error).__name__}") from error


def load_images(sources: Sequence[str], img_size: int) -> np.ndarray:
    """(Q, img_size, img_size, 3) uint8: each source decoded exactly as prepare decodes."""
    import numpy as np

    from imgrec.images import SkippedImage, decode

    decoded = []
    for source in sources:
        try:
            decoded.append(decode(read_image(source), img_size))
        except SkippedImage as skipped:
            raise ImgrecError(f"{source} is not a usable image ({skipped.reason}).") from skipped
    return np.stack(decoded)


def query_embeddings(
    model: CNNClassifier,
    sources: Sequence[str],
    img_size: int,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """(decoded images, L2-normalised embeddings) of the queries, made as the embed stage does."""
    from imgrec.inference import embed

    images = load_images(sources, img_size)
    return images, embed(model, images, batch_size=batch_size, device=device)


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


def _load_model(args: argparse.Namespace) -> tuple[CNNClassifier, dict, torch.device]:
    from imgrec.checkpoint import load_checkpoint
    from imgrec.runtime import pick_device

    device = pick_device(args.device)
    model, info = load_checkpoint(args.model, device)
    return model, info, device


def cmd_recommend(args: argparse.Namespace) -> None:
    from imgrec.catalog import load_catalog

    model, info, device = _load_model(args)
    img_size = info["preprocessing"]["img_size"]
    catalog = load_catalog(args.catalog, args.prepared)
    check_catalog(args.model, catalog)
    images, queries = query_embeddings(
        model, args.images, img_size, device=device, batch_size=args.batch_size
    )
    results = search(catalog, queries, args.top_k)

    if args.out:
        import numpy as np

        from imgrec.figures import neighbor_title, recommendation_figure, save_figure

        positions = [catalog.positions(np.array([n.row_id for n in r])) for r in results]
        save_figure(
            recommendation_figure(
                list(images),
                [f"query\n{_source_name(s)}" for s in args.images],
                [[catalog.images[p] for p in row] for row in positions],
                [[neighbor_title(n.label, n.score) for n in r] for r in results],
            ),
            args.out,
        )
    if args.json:
        print(
            json.dumps(
                [
                    {"query": s, "results": [vars(n) for n in r]}
                    for s, r in zip(args.images, results, strict=True)
                ],
                indent=2,
            )
        )
        return
    for number, (source, neighbors) in enumerate(zip(args.images, results, strict=True)):
        if number:
            print()
        print(f"{source}: top {args.top_k} of {len(catalog.row_ids)} catalog items")
        rows = [(str(n.rank), str(n.row_id), n.label, f"{n.score:.4f}") for n in neighbors]
        print(format_table(("rank", "row_id", "label", "score"), rows, align="rrlr"))
    if args.out:
        print(f"figure: {args.out}")


def cmd_classify(args: argparse.Namespace) -> None:
    from imgrec.inference import predict_logits

    model, info, device = _load_model(args)
    images = load_images(args.images, info["preprocessing"]["img_size"])
    logits = predict_logits(model, images, batch_size=args.batch_size, device=device)
    probabilities, classes = logits.softmax(dim=1).max(dim=1)
    predictions = [
        {"image": source, "label": info["class_names"][c], "probability": round(p, 6)}
        for source, c, p in zip(args.images, classes.tolist(), probabilities.tolist(), strict=True)
    ]
    if args.json:
        print(json.dumps(predictions, indent=2))
        return
    rows = [(p["image"], p["label"], f"{p['probability']:.4f}") for p in predictions]
    print(format_table(("image", "label", "probability"), rows, align="llr"))


def cmd_machine(args: argparse.Namespace) -> None:
    import torch  # noqa: F401 - loaded so the line can say which kernels it uses

    from imgrec import kernels

    print(kernels.machine_line())


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
        "above the current one that holds dvc.yaml). Produce them with `dvc repro` or `dvc pull`.",
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
        "--json", action="store_true", help="print machine-readable JSON instead of a table"
    )

    recommend = commands.add_parser(
        "recommend",
        parents=[common],
        help="the catalog items most similar to each image",
        description="Print the top-k most similar catalog items (row id, label, cosine score) "
        "for each image, embedded exactly as the pipeline embeds its catalog.",
    )
    recommend.add_argument(
        "--catalog",
        metavar="DIR",
        help=f"embeddings folder from the embed stage (default: {DEFAULT_CATALOG})",
    )
    recommend.add_argument(
        "--prepared",
        metavar="DIR",
        help=f"prepared dataset folder from the prepare stage (default: {DEFAULT_PREPARED})",
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
        metavar="PNG",
        help="also write a PNG of each query beside its top-k, as the figure stage does",
    )
    recommend.set_defaults(run=cmd_recommend)

    classify = commands.add_parser(
        "classify",
        parents=[common],
        help="the predicted class of each image",
        description="Print the predicted class name and its probability for each image.",
    )
    classify.set_defaults(run=cmd_classify, catalog=None, prepared=None)

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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    resolve_defaults(args, find_repo_root())
    # Stdout carries the results (maybe JSON); anything a library logs goes to stderr.
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    try:
        args.run(args)
    except ImgrecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted.", file=sys.stderr)
        return 130
    return 0
