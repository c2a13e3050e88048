"""Stage embed: one L2-normalised `forward_features` embedding per prepared image."""

import numpy as np

from imgrec import params, runtime, stage
from imgrec.checkpoint import load_checkpoint
from imgrec.dataset import load_prepared
from imgrec.inference import embed


def main() -> None:
    parser = stage.StageParser(description=__doc__)
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--device", type=stage.param, required=True)
    parser.add_argument("--num-threads", type=stage.param, required=True)
    parser.add_argument("--out", required=True, help="folder for embeddings.npy and row_ids.npy")
    args = parser.parse_args()
    runtime.make_deterministic(params.positive_int("num_threads", args.num_threads))
    device = runtime.pick_device(str(args.device))

    data = load_prepared(args.prepared)
    model, _ = load_checkpoint(args.model, device)
    embeddings = embed(model, data.images, device=device, desc="embed")  # (N, embedding_dim)
    print(f"embedded {len(embeddings)} images into {embeddings.shape[1]} dimensions")
    with stage.atomic_dir(args.out) as tmp:
        np.save(tmp / "embeddings.npy", embeddings)
        np.save(tmp / "row_ids.npy", data.row_ids)


if __name__ == "__main__":
    stage.run(main)
