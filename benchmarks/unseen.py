"""Retrieval on classes the model never trained on: the pipeline's recipe (params.yaml)
trained with some classes held out, every image embedded, and precision@k and mAP@k of the
unseen classes' items as queries against the catalog of all other items (seen and unseen
classes; relevant: the same label), beside the same numbers for seen-class queries.

The held-out classes are drawn by `--holdout-seed`; training sees only the other classes'
train split (and validates on their validation split). Each vector the model computes on
the way to its logits is scored: the embedding the recommender searches (`forward_features`),
the appearance vector novelty is judged on (`forward_appearance`), and the others from one
more pass; raw pixels and the untrained model are references. One Markdown table per
dataset and draw is printed; benchmarks/RESULTS.md carries the reading. Usage:
benchmarks/README.md.
"""

import imgrec  # noqa: F401, I001 - first: it applies IMGREC_KERNELS before numpy and torch load

import argparse
import os
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

import recipe
from imgrec.pipeline import kernels, runtime
from imgrec.training.inference import batches, catalog_vectors, memory_format, to_tensor
from imgrec.training.model import CNNClassifier
from imgrec.recommender.neighbors import make_index
from imgrec.data.prepared import Prepared
from imgrec.recommender.recommend import RecommendConfig
from imgrec.training.train import TrainConfig

THUMBNAIL = 16  # the pixels reference: each image averaged down to 16 x 16 x 3
# name: what it is, in the tables' words
VECTORS = {
    "embedding": "embedding (`forward_features`, what recommend searches)",
    "appearance": "appearance (`forward_appearance`, what novelty is judged on)",
    "pre_relu": "embedding before its ReLU (`embed[0]`)",
    "pooled": "pooled grid (`features`: 4x4 average pool of the last block, flattened)",
    "block3": "block 3's channel means",
    "logits": "logits (seen classes)",
    "untrained": "embedding of the untrained model (reference)",
    "pixels": f"pixels, {THUMBNAIL}x{THUMBNAIL} thumbnail (reference: no model)",
}


def query_metrics(neighbor_labels: np.ndarray, labels: np.ndarray, queries: np.ndarray) -> dict:
    """`recommend.retrieval_metrics` for the items at `queries` only: each one's top-k
    against the whole catalog (N, k), and AP@k divided by min(k, the other items of its label
    in the whole catalog)."""
    relevant = neighbor_labels[queries] == labels[queries, None]  # (Q, k)
    k = relevant.shape[1]
    precision_at_rank = np.cumsum(relevant, axis=1) / np.arange(1, k + 1)
    findable = np.minimum(k, np.bincount(labels)[labels[queries]] - 1)
    average_precision = np.where(
        findable > 0, (precision_at_rank * relevant).sum(axis=1) / np.maximum(findable, 1), 0.0
    )
    return {"precision@k": float(relevant.mean()), "map@k": float(average_precision.mean())}


def seen_only(data: Prepared, unseen: np.ndarray) -> Prepared:
    """What training sees: the seen classes' train and validation splits, relabelled 0..S-1
    (an unseen class's items keep label -1, in no split)."""
    seen = np.setdiff1d(np.arange(len(data.class_names)), unseen)
    new_label = np.full(len(data.class_names), -1)
    new_label[seen] = np.arange(len(seen))

    def keep(index: np.ndarray) -> np.ndarray:
        return index[np.isin(data.labels[index], seen)]

    return replace(
        data,
        labels=new_label[data.labels],
        train_index=keep(data.train_index),
        val_index=keep(data.val_index),
        class_names=[data.class_names[c] for c in seen],
    )


def unit(vectors: torch.Tensor) -> np.ndarray:
    return F.normalize(vectors.float().cpu(), dim=1).numpy()


@torch.inference_mode()
def other_vectors(model: CNNClassifier, images: np.ndarray, device, batch_size: int = 256):
    """The vectors the model computes on the way to its logits, besides `catalog_vectors`'
    two, from one pass (L2-normalised, as the catalog's)."""
    model.eval()
    blocks = len(model.config.widths)
    parts = {"pre_relu": [], "pooled": [], "block3": [], "logits": []}
    for batch in batches(images, None, batch_size):
        x = to_tensor(batch, device).contiguous(memory_format=memory_format(True))
        before_last = model.features[: blocks - 1](x)  # (B, 128, h, w): blocks 1-3
        pooled = model.features[blocks:](model.features[blocks - 1](before_last))  # (B, 4096)
        pre_relu = model.embed[0](pooled)  # (B, 512)
        parts["block3"].append(before_last.mean(dim=(2, 3)))
        parts["pooled"].append(pooled)
        parts["pre_relu"].append(pre_relu)
        parts["logits"].append(model.head(torch.relu(pre_relu)))
    return {name: unit(torch.cat(chunks)) for name, chunks in parts.items()}


def thumbnails(images: np.ndarray) -> np.ndarray:
    """(N, 3 * THUMBNAIL**2) each image's pixels averaged down to THUMBNAIL x THUMBNAIL."""
    chunks = [F.adaptive_avg_pool2d(to_tensor(batch), THUMBNAIL).flatten(1)
              for batch in batches(images, None, 512)]  # fmt: skip
    return unit(torch.cat(chunks))


def all_vectors(trained: recipe.Trained, untrained: CNNClassifier, data: Prepared) -> dict:
    device = trained.device
    embedding, appearance = catalog_vectors(trained.model, data.images, device=device)
    vectors = {"embedding": embedding, "appearance": appearance}
    vectors |= other_vectors(trained.model, data.images, device)
    vectors["untrained"] = catalog_vectors(untrained.to(device).eval(), data.images,
                                           device=device)[0]  # fmt: skip
    vectors["pixels"] = thumbnails(data.images)
    return {name: vectors[name] for name in VECTORS}


def score(vectors: dict, data: Prepared, unseen: np.ndarray, params: dict) -> dict:
    """{vector: {column: value}}: each query group's precision@k and map@k, every item's
    top-k searched among all the others by the index params.yaml names."""
    config = RecommendConfig.from_params(params)
    labels = data.labels
    is_unseen = np.isin(labels, unseen)
    groups = {
        "unseen": np.flatnonzero(is_unseen),
        "seen, val": data.val_index[~is_unseen[data.val_index]],
        "seen, all": np.flatnonzero(~is_unseen),
    }
    table = {}
    for name, matrix in vectors.items():
        _, neighbors = make_index(config).fit(matrix).search_catalog(config.top_k)  # (N, k)
        neighbor_labels = labels[neighbors]
        row = {"dims": matrix.shape[1]}
        for group, queries in groups.items():
            metrics = query_metrics(neighbor_labels, labels, queries)
            row[f"{group}: P@k"], row[f"{group}: mAP@k"] = metrics["precision@k"], metrics["map@k"]
            if group == "unseen":  # where an unseen query's neighbours come from instead
                row["unseen: top-k in seen classes"] = float(
                    (~is_unseen[neighbors[queries]]).mean()
                )
        table[name] = row
    return table


def print_table(title: str, table: dict) -> None:
    columns = list(next(iter(table.values())))
    print(f"\n## {title}\n")
    print(f"| vector | {' | '.join(columns)} |")
    print("|---" * (len(columns) + 1) + "|")
    for name, row in table.items():
        cells = [str(row["dims"])] + [f"{row[c]:.4f}" for c in columns[1:]]
        print(f"| {VECTORS[name]} | {' | '.join(cells)} |")


def run_draw(dataset: str, data: Prepared, holdout_seed: int, args, params: dict) -> dict:
    classes = len(data.class_names)
    rng = np.random.default_rng(holdout_seed)
    unseen = np.sort(rng.choice(classes, size=args.holdout, replace=False))
    config = TrainConfig.from_params(params)
    start = time.perf_counter()
    runtime.seed_everything(config.seed)  # the trained model's initial weights, kept
    untrained = CNNClassifier(config.model_config(classes - len(unseen)))
    seen_data = seen_only(data, unseen)
    trained = recipe.train_as_the_stage(seen_data, config, args.max_batches)
    table = score(all_vectors(trained, untrained, data), data, unseen, params)
    history = trained.result.history
    best = history[trained.result.best_epoch - 1] if trained.result.best_epoch else history[-1]
    names = ", ".join(data.class_names[c] for c in unseen)
    k = params["top_k"]
    is_unseen = np.isin(data.labels, unseen)
    counts = np.bincount(data.labels)[data.labels[is_unseen]]
    chance = float(((counts - 1) / (len(data.labels) - 1)).mean())
    print_table(
        f"unseen: {recipe.describe(dataset, data)}; held out (holdout seed {holdout_seed}): "
        f"{names} ({is_unseen.sum()} images); trained on the other {classes - len(unseen)} "
        f"classes' {len(seen_data.train_index)} train images",
        table,
    )
    print(f"\nk = top_k = {k}. Training: best epoch {trained.result.best_epoch} of "
          f"{trained.result.epochs_run} run, val accuracy on the seen classes "
          f"{best['val_acc']:.4f}; {(time.perf_counter() - start) / 60:.1f} min. Chance "
          f"(P@k of random neighbours) for an unseen query: {chance:.4f}.", flush=True)  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    recipe.add_recipe_arguments(parser)
    add("--holdout", type=int, default=3, help="classes held out of training")
    add("--holdout-seeds", default="0", help="one draw of held-out classes per seed")
    args = parser.parse_args()
    params = recipe.read_params(args.set)
    print(f"params: params.yaml{''.join(f' -S {s}' for s in args.set)}")
    print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
    for dataset in args.dataset or recipe.DATASETS:
        data = recipe.prepared_dataset(dataset, args.rows, params, args.work_dir, args.data_dir)
        tables = [run_draw(dataset, data, int(seed), args, params)
                  for seed in args.holdout_seeds.split(",")]  # fmt: skip
        if len(tables) > 1:
            mean = {name: {column: float(np.mean([t[name][column] for t in tables]))
                           for column in tables[0][name]} for name in VECTORS}  # fmt: skip
            for row, first in zip(mean.values(), tables[0].values(), strict=True):
                row["dims"] = first["dims"]
            print_table(f"unseen: {dataset}, mean over {len(tables)} draws", mean)
    print(f"\n- {kernels.machine_line()}")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
