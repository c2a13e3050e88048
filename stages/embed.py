"""Stage embed: the catalog: each prepared image's embedding and appearance vectors."""

from imgrec import runtime, stage
from imgrec.catalog import save_catalog
from imgrec.checkpoint import checkpoint_md5, load_checkpoint
from imgrec.config import EmbedConfig
from imgrec.inference import embed
from imgrec.prepared import load_prepared


def main(args, config: EmbedConfig) -> None:
    device = runtime.start(config)
    data = load_prepared(args.prepared)
    model = load_checkpoint(args.model, device).model
    embeddings = embed(model, data.images, device=device, desc="embed")  # (N, embedding_dim)
    appearance = embed(model, data.images, space="appearance", device=device, desc="appearance")
    print(f"embedded {len(embeddings)} images into {embeddings.shape[1]} dimensions")
    save_catalog(args.out, embeddings, appearance, data.row_ids, checkpoint_md5(args.model))


if __name__ == "__main__":
    stage.run(main, ["prepared", "model", "out"])
