"""Stage train: fit the seed's CNN on the prepared arrays; log curves with dvclive."""

from imgrec import runtime, stage
from imgrec.checkpoint import save_checkpoint
from imgrec.files import write_json
from imgrec.model import CNNClassifier, ModelConfig
from imgrec.prepared import load_prepared, prepared_md5
from imgrec.training import TrainConfig, train


def main(args, config: TrainConfig) -> None:
    device = runtime.start(config)
    generator = runtime.seed_everything(config.seed)
    data = load_prepared(args.prepared)
    print(
        f"dataset: {len(data.train_index)} train / {len(data.val_index)} val images, "
        f"{len(data.class_names)} classes, {data.img_size} px"
    )
    model = CNNClassifier(ModelConfig(num_classes=len(data.class_names), dropout=config.dropout))
    from dvclive import Live  # here: dvclive loads numpy, which must load after imgrec

    with Live(args.live_dir, save_dvc_exp=False, dvcyaml=None, report=None) as live:

        def log_epoch(record: dict) -> None:
            live.step = record["epoch"]
            for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
                live.log_metric(key.replace("_", "/"), record[key])
            live.log_metric("lr", record["lr"])
            live.make_summary()

        result = train(
            model, data, config, generator=generator, device=device,
            max_batches=args.max_batches, on_epoch=log_epoch,
        )  # fmt: skip

    save_checkpoint(
        args.model, model.cpu(), data.class_names, data.img_size,
        train_config=config, prepared_md5=prepared_md5(args.prepared),
    )  # fmt: skip
    # The weights of best_epoch are the model's; its validation scores come from evaluate,
    # and how many epochs ran is the last step of the dvclive curves.
    write_json(args.metrics, {"best_epoch": result.best_epoch})


def options(parser) -> None:
    parser.add_argument("--max-batches", type=int, help="cap batches per epoch (smoke tests)")


if __name__ == "__main__":
    stage.run(main, TrainConfig, ["prepared", "model", "live_dir", "metrics"], options=options)
