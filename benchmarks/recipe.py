"""The pipeline's recipe for the accuracy benchmarks (`unseen.py`, `spread.py`): a dataset
fetched and prepared by `fetch.fetch` and `prepare.prepare`, a model trained by `train.train`
as the train stage trains it, and scored by the package's evaluate, embed and recommend code,
all with the configs built from params.yaml.

The datasets: the built-in digits (`digits`), and the benchmark catalog (`catalog`,
make_catalog.py: 10 classes of drawn shapes) at a chosen number of rows.
"""

import imgrec  # noqa: F401, I001 - first: it applies IMGREC_KERNELS before numpy and torch load

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from imgrec.pipeline import kernels, runtime
from imgrec.training.checkpoint import load_checkpoint, save_checkpoint
from imgrec.training.evaluate import classification_metrics
from imgrec.data.fetch import fetch
from imgrec.files import atomic_dir
from imgrec.training.inference import catalog_vectors, predict_logits
from imgrec.training.model import CNNClassifier
from imgrec.recommender.neighbors import make_index
from imgrec.data.prepare import PrepareConfig, prepare
from imgrec.data.prepared import Prepared, load_prepared
from imgrec.recommender.recommend import RecommendConfig, retrieval_metrics
from imgrec.training.train import TrainConfig, TrainResult, train

HERE = Path(__file__).resolve().parent
DATASETS = ("digits", "catalog")


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every recipe benchmark takes: datasets, rows, batches, params, folders."""
    add = parser.add_argument
    add("--dataset", action="append", choices=DATASETS, help="repeat for both (default)")
    add("--rows", type=int, default=2000, help="catalog rows (the digits are all 1,797)")
    add("--max-batches", type=int, help="cap batches per epoch (smoke runs)")
    add("-S", "--set", action="append", default=[], help="PARAM=VALUE, as dvc's -S")
    add("--data-dir", type=Path, default=HERE / "data", help="where catalogs are made")
    add("--work-dir", type=Path, default=HERE / "work", help="prepared datasets")


def read_params(overrides: list[str]) -> dict:
    """params.yaml with `PARAM=VALUE` overrides (as dvc's -S), in this process's kernels."""
    params = yaml.safe_load((HERE.parent / "params.yaml").read_text())
    for override in overrides:
        name, value = override.split("=", 1)
        if name not in params:
            raise SystemExit(f"-S {override}: params.yaml has no param {name}")
        params[name] = yaml.safe_load(value)
    return params | {"kernels": kernels.active()}


def prepared_dataset(dataset: str, rows: int, params: dict, work_dir: Path, data_dir: Path):
    """The dataset fetched and prepared as the fetch and prepare stages do (`rows` and
    `img_size`, `val_fraction`, `seed` from `params`); made once in `work_dir`, then reused."""
    import make_catalog

    size = params["img_size"]
    folder = work_dir / (f"digits-{size}px" if dataset == "digits" else f"catalog-{rows}-{size}px")
    if not (folder / "prepared" / "meta.json").exists():
        if dataset == "digits":
            source = "builtin:digits"
        else:
            catalog = data_dir / f"catalog-{rows}"
            if not make_catalog.catalog_is_ready(catalog, rows):
                print(f"generating a {rows}-row catalog ...", flush=True)
                make_catalog.make_catalog(catalog, rows)
            source = str(catalog.resolve() / "*.parquet")
        folder.mkdir(parents=True, exist_ok=True)
        scheduler = params["dask_scheduler"]
        fetch(source, rows, folder / "raw.parquet", dask_scheduler=scheduler)
        with atomic_dir(folder / "prepared") as tmp:
            prepare(folder / "raw.parquet", tmp, PrepareConfig.from_params(params))
    return load_prepared(folder / "prepared")


def describe(dataset: str, data: Prepared) -> str:
    name = "the built-in digits" if dataset == "digits" else "the benchmark catalog"
    return (f"{name}, {len(data.labels)} images at {data.img_size} px, "
            f"{len(data.train_index)} train / {len(data.val_index)} val")  # fmt: skip


@dataclass
class Trained:
    model: CNNClassifier  # in eval mode, as `load_checkpoint` rebuilds it
    result: TrainResult
    device: object


def train_as_the_stage(data: Prepared, config: TrainConfig, max_batches: int | None) -> Trained:
    """Train as stages/train.py does (one process), then round-trip the checkpoint as
    evaluate and embed load it, so the scores below are the pipeline's bits."""
    runtime.make_deterministic(config.num_threads)
    device = runtime.pick_device(config.device)
    generator = runtime.seed_everything(config.seed)
    model = CNNClassifier(config.model_config(len(data.class_names)))
    result = train(model, data, config, generator=generator, device=device,
                   max_batches=max_batches)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pt"
        save_checkpoint(path, model.cpu(), data.class_names, data.img_size,
                        train_config=config.identity(1), prepared_md5="benchmark")  # fmt: skip
        model = load_checkpoint(path, device).model
    return Trained(model, result, device)


def pipeline_metrics(trained: Trained, data: Prepared, params: dict) -> dict:
    """What evaluate and recommend report for this model on `data`: val_accuracy and
    macro_f1 on the validation split, precision@k and map@k with every item a query against
    the catalog of all the others, by the index params.yaml names."""
    model, device = trained.model, trained.device
    logits = predict_logits(model, data.images, data.val_index, device=device)
    y_true = data.labels[data.val_index]
    y_pred = logits.softmax(1).numpy().argmax(1)  # as the evaluate stage predicts
    scores, _ = classification_metrics(y_true, y_pred, data.class_names)
    embeddings, _ = catalog_vectors(model, data.images, device=device)
    config = RecommendConfig.from_params(params)
    _, neighbors = make_index(config).fit(embeddings).search_catalog(config.top_k)
    return scores | retrieval_metrics(data.labels[neighbors], data.labels)


def stdev(values: list[float]) -> float:
    """The sample standard deviation (n - 1), 0 for a single value."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
