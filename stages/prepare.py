"""Stage prepare: decode every image once, resize, split train/val, count what was skipped."""

from imgrec import params, stage
from imgrec.dataset import prepare


def main() -> None:
    parser = stage.StageParser(description=__doc__)
    parser.add_argument("--data", required=True, help="parquet file written by fetch")
    parser.add_argument("--img-size", type=stage.param, required=True)
    parser.add_argument("--val-fraction", type=stage.param, required=True)
    parser.add_argument("--seed", type=stage.param, required=True)
    parser.add_argument("--max-bad-fraction", type=stage.param, required=True)
    parser.add_argument("--out", required=True, help="folder for the prepared arrays")
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()
    img_size = params.positive_int("img_size", args.img_size)
    val_fraction = params.open_fraction("val_fraction", args.val_fraction)
    seed = params.non_negative_int("seed", args.seed)
    max_bad_fraction = params.closed_fraction("max_bad_fraction", args.max_bad_fraction)

    with stage.atomic_dir(args.out) as tmp:
        counts = prepare(
            args.data,
            tmp,
            img_size=img_size,
            val_fraction=val_fraction,
            seed=seed,
            max_bad_fraction=max_bad_fraction,
        )
    stage.write_json(args.metrics, counts)


if __name__ == "__main__":
    stage.run(main)
