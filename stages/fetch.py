"""Stage fetch: the first `rows` rows of `source` as one parquet file in the HF Image schema."""

from imgrec import stage
from imgrec.config import FetchConfig
from imgrec.files import atomic_file, write_json
from imgrec.sources import fetch


def main(args, config: FetchConfig) -> None:
    with atomic_file(args.out) as tmp:
        result = fetch(config.source, config.rows, tmp)
    print(f"dataset: {result.rows_fetched} rows from {result.files_read} parquet file(s)")
    write_json(args.metrics, {"rows_fetched": result.rows_fetched})


if __name__ == "__main__":
    stage.run(main, ["out", "metrics"])
