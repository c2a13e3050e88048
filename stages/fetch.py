"""Stage fetch: the first `rows` rows of `source` as one parquet file in the HF Image schema."""

from imgrec import params, stage
from imgrec.sources import fetch


def main() -> None:
    parser = stage.StageParser(description=__doc__)
    parser.add_argument(
        "--source", required=True, help="builtin:digits, a parquet path/glob, or an fsspec URL"
    )
    parser.add_argument("--rows", type=stage.param, required=True)
    parser.add_argument("--out", required=True, help="parquet file to write")
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()
    rows = params.positive_int("rows", args.rows)

    with stage.atomic_file(args.out) as tmp:
        result = fetch(args.source, rows, tmp)
    print(f"dataset: {result.rows_fetched} rows from {result.files_read} parquet file(s)")
    stage.write_json(args.metrics, {"rows_fetched": result.rows_fetched, "rows_requested": rows})


if __name__ == "__main__":
    stage.run(main)
