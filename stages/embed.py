"""Stage embed: the catalog: each catalog image's embedding and appearance vectors, only the
images not embedded by an earlier run computed (`embed.embed_catalog`), and the model's
"no close match" threshold from its training data."""

from imgrec.data.prepared import load_prepared
from imgrec.pipeline import runtime, stage
from imgrec.recommender.catalog import save_catalog
from imgrec.recommender.embed import EmbedConfig, embed_catalog, no_close_match_threshold
from imgrec.recommender.kept_vectors import VectorKey, load_kept, save_kept, union
from imgrec.training.checkpoint import check_matches, checkpoint_md5, load_checkpoint


def main(args, config: EmbedConfig) -> None:
    device = runtime.start(config)
    catalog, training = load_prepared(args.catalog), load_prepared(args.training)
    checkpoint = load_checkpoint(args.model, device)
    check_matches(checkpoint, catalog.img_size, args.catalog)
    model_md5 = checkpoint_md5(args.model)
    key = VectorKey.here(model_md5, device, config.kernels)
    kept = load_kept(args.kept, key)
    items = embed_catalog(checkpoint.model, catalog.images, kept, device, desc="embed")
    print(items.summary(args.kept))
    # The threshold is the model's: its training data's vectors (kept after the first run).
    calibration = embed_catalog(checkpoint.model, training.images, items.kept, device,
                                position_matters=items.kept is None)  # fmt: skip
    if calibration.new_images and items.kept is not None:
        print(f"embedded {calibration.new_images} training images for the threshold")
    threshold = no_close_match_threshold(
        calibration.appearance, training.train_index, training.val_index
    )
    save_catalog(args.out, items.embeddings, items.appearance, catalog.row_ids, model_md5,
                 threshold)  # fmt: skip
    if items.kept is not None:
        save_kept(args.kept, key, union(items.kept, calibration.kept))


if __name__ == "__main__":
    stage.run(main, EmbedConfig, ["catalog", "training", "model", "kept", "out"])
