"""Stage train: fit the seed's CNN on the prepared arrays; log curves with dvclive. A rerun
of a killed run resumes from --state. With `nproc` > 1 it starts that many ranks of itself
(DDP through torchrun's launcher); rank 0 alone writes the outputs."""

from functools import partial

from imgrec import fingerprint
from imgrec.data.prepared import load_prepared, prepared_md5
from imgrec.files import write_json
from imgrec.pipeline import ddp, runtime, stage
from imgrec.training.checkpoint import save_checkpoint
from imgrec.training.model import CNNClassifier
from imgrec.training.train import TrainConfig, log_epoch, rank_batch_size, train
from imgrec.training.train_state import Resume


def main(args, config: TrainConfig) -> None:
    if config.nproc > 1 and not ddp.under_torchrun():
        # Bad params or a missing dataset are said once, here, not once per rank.
        rank_batch_size(config.batch_size, config.nproc)
        load_prepared(args.prepared)
        print(f"train: {config.nproc} ranks (DDP), started through torchrun's launcher")
        return ddp.launch(config.nproc)
    world = runtime.World.from_environment()
    device = runtime.start(config, world, config.precision)
    data, data_md5 = load_prepared(args.prepared), prepared_md5(args.prepared)
    if world.is_main:  # before seeding: it draws torch's RNG
        setup = fingerprint.setup_for(config, data.img_size, device)
        print(fingerprint.record(args.fingerprint, setup, device))
    # Dropout and augmentation differ between ranks, as their images do; rank 0 seeds as a
    # single process does, and DDP gives every rank rank 0's initial weights.
    generator = runtime.seed_everything(config.seed + world.rank)
    if world.is_main:
        print(f"dataset: {len(data.train_index)} train / {len(data.val_index)} val images, "
              f"{len(data.class_names)} classes, {data.img_size} px")  # fmt: skip
    model = CNNClassifier(config.model_config(len(data.class_names)))
    from dvclive import Live  # here: dvclive loads numpy, which must load after imgrec

    resume = Resume.of_run(args.state, data_md5, config.identity(world.size), device,
                           script=__file__, max_batches=args.max_batches)  # fmt: skip
    fit = partial(train, model, data, config, generator=generator, device=device, world=world,
                  max_batches=args.max_batches, resume=resume)  # fmt: skip
    with ddp.process_group(world, device):
        if not world.is_main:  # rank 0 alone writes the curves and the outputs
            return fit()
        with Live(args.live_dir, save_dvc_exp=False, dvcyaml=None, report=None) as live:
            result = fit(on_epoch=partial(log_epoch, live))  # dvclive's curves
    save_checkpoint(args.model, model.cpu(), data.class_names, data.img_size,
                    train_config=resume.identity.train_config, prepared_md5=data_md5)  # fmt: skip
    write_json(args.metrics, {"best_epoch": result.best_epoch})  # the model's: evaluate scores it
    resume.finished()


if __name__ == "__main__":
    paths = ["prepared", "model", "live_dir", "metrics", "fingerprint", "state"]
    stage.run(main, TrainConfig, paths, options=lambda parser: parser.add_argument(
        "--max-batches", type=int, help="cap batches per epoch (smoke tests)"))  # fmt: skip
