"""Stage fetch: the first `rows` rows of `source` as one parquet file in the HF Image schema."""

from imgrec.data.fetch import FetchConfig, fetch
from imgrec.files import atomic_file, write_json
from imgrec.pipeline import stage


def main(args, config: FetchConfig) -> None:
    with atomic_file(args.out) as tmp:
        result = fetch(config.source, config.rows, tmp, dask_scheduler=config.dask_scheduler)
    print(f"dataset: {result.rows_fetched} rows from {result.files_read} parquet file(s)")
    # A report, not a metric: counts, which prepare's report (images + rows_skipped) repeats.
    write_json(args.report, {"rows_fetched": result.rows_fetched, "files_read": result.files_read})


if __name__ == "__main__":
    stage.run(main, FetchConfig, ["out", "report"])
