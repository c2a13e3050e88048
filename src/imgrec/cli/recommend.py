"""`imgrec recommend`: the catalog items most similar to each image."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from imgrec.cli.common import format_table, in_given_order, load_queries, positive_int
from imgrec.errors import EXIT_FAILED, ImgrecError
from imgrec.serving.query import (
    DEFAULT_AUDIT,
    DEFAULT_HASHES,
    Recommender,
    describe,
    recommend_answer,
)

if TYPE_CHECKING:
    import numpy as np

    from imgrec.recommender.catalog import Catalog
    from imgrec.serving.query import Neighbor


def add_parser(commands, parents: dict[str, argparse.ArgumentParser]) -> None:
    recommend = commands.add_parser(
        "recommend",
        parents=[parents["queries"]],
        help="the catalog items most similar to each image",
        description="Print the top-k most similar catalog items (row id, label, cosine score) "
        "for each image, embedded exactly as the pipeline embeds its catalog, and say when an "
        "image is unlike every catalog image (no close match: its appearance is less like its "
        "nearest catalog image than 99%% of validation images are like their nearest training "
        "image).",
    )
    recommend.add_argument(
        "--top-k",
        type=positive_int,
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
    recommend.set_defaults(run=run)


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

    from imgrec.recommender.plotting import neighbor_title, recommendation_figure, save_figure

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


def run(args: argparse.Namespace) -> int:
    recommender = Recommender.load(args.model, args.catalog, args.prepared, args.device,
                                   audit=args.audit, hashes=args.hashes)  # fmt: skip
    catalog, catalog_size = recommender.catalog, len(recommender.catalog.row_ids)
    recommender.check_top_k(args.top_k)
    sources, images, failed = load_queries(args.images, recommender.img_size)
    results, novel, copies = recommender.recommend(images, args.top_k, args.batch_size)

    try:
        if args.json:
            answers = [
                recommend_answer(s, r, n, c)
                for s, n, r, c in zip(sources, novel, results, copies, strict=True)
            ]
            print(json.dumps(in_given_order(args.images, answers, failed, "query"), indent=2))
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
