"""Stage train: fit the seed's CNN on the prepared arrays; log curves with dvclive."""

from dvclive import Live

from imgrec import params, runtime, stage
from imgrec.checkpoint import save_checkpoint
from imgrec.dataset import load_prepared
from imgrec.model import CNNClassifier, ModelConfig
from imgrec.training import train


def main() -> None:
    parser = stage.StageParser(description=__doc__)
    parser.add_argument("--prepared", required=True)
    for name in (
        "batch-size",
        "epochs",
        "lr",
        "patience",
        "lr-factor",
        "lr-patience",
        "dropout",
        "augment",
        "seed",
        "device",
        "num-threads",
        "channels-last",
        "precision",
    ):
        parser.add_argument(f"--{name}", type=stage.param, required=True)
    parser.add_argument(
        "--max-batches", type=int, default=None, help="cap batches per epoch (smoke tests)"
    )
    parser.add_argument("--model", required=True, help="checkpoint to write")
    parser.add_argument("--live-dir", required=True, help="dvclive folder for per-epoch curves")
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()
    hyper = {
        "batch_size": params.positive_int("batch_size", args.batch_size),
        "epochs": params.positive_int("epochs", args.epochs),
        "lr": params.positive_float("lr", args.lr),
        "patience": params.positive_int("patience", args.patience),
        "lr_factor": params.open_fraction("lr_factor", args.lr_factor),
        "lr_patience": params.non_negative_int("lr_patience", args.lr_patience),
        "augment": params.boolean("augment", args.augment),
        "channels_last": params.boolean("channels_last", args.channels_last),
        "precision": params.choice("precision", args.precision, ("fp32", "bf16")),
    }
    dropout = params.closed_fraction("dropout", args.dropout)
    seed = params.non_negative_int("seed", args.seed)
    runtime.make_deterministic(params.positive_int("num_threads", args.num_threads))
    device = runtime.pick_device(str(args.device))
    generator = runtime.seed_everything(seed)

    data = load_prepared(args.prepared)
    print(
        f"dataset: {len(data.train_index)} train / {len(data.val_index)} val images, "
        f"{len(data.class_names)} classes, {data.img_size} px; device: {device}"
    )
    model = CNNClassifier(ModelConfig(num_classes=len(data.class_names), dropout=dropout))

    with Live(args.live_dir, save_dvc_exp=False, dvcyaml=None, report=None) as live:

        def log_epoch(record: dict) -> None:
            live.step = record["epoch"]
            for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
                live.log_metric(key.replace("_", "/"), record[key])
            live.log_metric("lr", record["lr"])
            live.make_summary()

        result = train(
            model,
            data.images,
            data.labels,
            data.train_index,
            data.val_index,
            generator=generator,
            device=device,
            max_batches=args.max_batches,
            on_epoch=log_epoch,
            **hyper,
        )

    save_checkpoint(args.model, model.cpu(), data.class_names, data.img_size)
    best = result.history[result.best_epoch - 1] if result.best_epoch else {}
    stage.write_json(
        args.metrics,
        {
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "stopped_early": result.stopped_early,
            "best_val_loss": best.get("val_loss"),
            "best_val_acc": best.get("val_acc"),
        },
    )


if __name__ == "__main__":
    stage.run(main)
