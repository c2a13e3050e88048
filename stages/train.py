"""Stage train: fit the seed's CNN on the prepared arrays; log curves with dvclive.

With `nproc` > 1 it starts that many ranks of itself (DDP through torchrun's launcher);
rank 0 alone writes the outputs.
"""

from dataclasses import replace
from functools import partial

from imgrec import distributed, runtime, stage
from imgrec.checkpoint import save_checkpoint
from imgrec.files import write_json
from imgrec.model import CNNClassifier, ModelConfig
from imgrec.prepared import load_prepared, prepared_md5
from imgrec.training import TrainConfig, rank_batch_size, train


def log_epoch(live, record: dict) -> None:
    live.step = record["epoch"]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc"):
        live.log_metric(key.replace("_", "/"), record[key])
    live.log_metric("lr", record["lr"])
    live.make_summary()


def main(args, config: TrainConfig) -> None:
    if config.nproc > 1 and not distributed.under_torchrun():
        # Bad params or a missing dataset are said once, here, not once per rank.
        rank_batch_size(config.batch_size, config.nproc)
        load_prepared(args.prepared)
        print(f"train: {config.nproc} ranks (DDP), started through torchrun's launcher")
        distributed.launch(config.nproc)
        return
    world = runtime.World.from_environment()
    device = runtime.start(config, world)
    # Dropout and augmentation differ between ranks, as their images do; rank 0 seeds as a
    # single process does, and DDP gives every rank rank 0's initial weights.
    generator = runtime.seed_everything(config.seed + world.rank)
    data = load_prepared(args.prepared)
    if world.is_main:
        print(
            f"dataset: {len(data.train_index)} train / {len(data.val_index)} val images, "
            f"{len(data.class_names)} classes, {data.img_size} px"
        )
    model = CNNClassifier(ModelConfig(num_classes=len(data.class_names), dropout=config.dropout))
    from dvclive import Live  # here: dvclive loads numpy, which must load after imgrec

    fit = partial(
        train, model, data, config, generator=generator, device=device, world=world,
        max_batches=args.max_batches,
    )  # fmt: skip
    with distributed.process_group(world, device):
        if not world.is_main:  # rank 0 alone writes the curves and the outputs
            fit()
            return
        with Live(args.live_dir, save_dvc_exp=False, dvcyaml=None, report=None) as live:
            result = fit(on_epoch=partial(log_epoch, live))
    save_checkpoint(
        args.model, model.cpu(), data.class_names, data.img_size,
        train_config=replace(config, nproc=world.size),  # torchrun's world, where it set one
        prepared_md5=prepared_md5(args.prepared),
    )  # fmt: skip
    # The weights of best_epoch are the model's; its validation scores come from evaluate,
    # and how many epochs ran is the last step of the dvclive curves.
    write_json(args.metrics, {"best_epoch": result.best_epoch})


def options(parser) -> None:
    parser.add_argument("--max-batches", type=int, help="cap batches per epoch (smoke tests)")


if __name__ == "__main__":
    stage.run(main, TrainConfig, ["prepared", "model", "live_dir", "metrics"], options=options)
