"""Stage embed: the catalog: each prepared image's embedding and appearance vectors."""

from imgrec import runtime, stage
from imgrec.catalog import save_catalog
from imgrec.checkpoint import check_matches, checkpoint_md5, load_checkpoint
from imgrec.embed import EmbedConfig, no_close_match_threshold
from imgrec.inference import catalog_vectors
from imgrec.prepared import load_prepared


def main(args, config: EmbedConfig) -> None:
    device = runtime.start(config)
    data = load_prepared(args.prepared)
    checkpoint = load_checkpoint(args.model, device)
    check_matches(checkpoint, data.img_size, args.prepared)
    model = checkpoint.model
    embeddings, appearance = catalog_vectors(model, data.images, device=device, desc="embed")
    print(f"embedded {len(embeddings)} images into {embeddings.shape[1]} dimensions")
    threshold = no_close_match_threshold(appearance, data.train_index, data.val_index)
    save_catalog(
        args.out, embeddings, appearance, data.row_ids, checkpoint_md5(args.model), threshold
    )


if __name__ == "__main__":
    stage.run(main, EmbedConfig, ["prepared", "model", "out"])
