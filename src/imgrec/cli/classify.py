"""`imgrec classify`: the predicted class of each image."""

import argparse
import json
import sys

from imgrec.cli.common import format_table, in_given_order, load_queries
from imgrec.errors import EXIT_FAILED
from imgrec.serving.query import Recommender, classify_answer


def add_parser(commands, parents: dict[str, argparse.ArgumentParser]) -> None:
    classify = commands.add_parser(
        "classify",
        parents=[parents["queries"]],
        help="the predicted class of each image",
        description="Print the predicted class name and its probability for each image, and "
        "flag an image unlike every catalog image (no close match): a confident class for "
        "such an image means little. The flag needs the catalog (--catalog, --prepared).",
    )
    classify.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    recommender = Recommender.load(
        args.model, args.catalog, args.prepared, args.device, need_catalog=False
    )
    if recommender.catalog is None:  # a classifier needs no catalog; the flag does
        print(f"warning: no novelty check ({recommender.why_no_catalog})", file=sys.stderr)
    sources, images, failed = load_queries(args.images, recommender.img_size)
    predictions = [
        classify_answer(source, *prediction)
        for source, prediction in zip(
            sources, recommender.classify(images, args.batch_size), strict=True
        )
    ]
    if args.json:
        print(json.dumps(in_given_order(args.images, predictions, failed, "image"), indent=2))
    else:
        flag = {True: "no close match", False: "", None: "?"}
        rows = [
            (p["image"], p["label"], f"{p['probability']:.4f}", flag[p["no_close_match"]])
            for p in predictions
        ]
        print(format_table(("image", "label", "probability", "catalog"), rows, align="llrl"))
    return EXIT_FAILED if failed else 0
