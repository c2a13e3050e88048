"""Stage fetch_catalog: the catalog's rows, the items to recommend from, as fetch reads the
training data; with `catalog_source` empty, a note that the training data is the catalog.
Always run (dvc.yaml), it reads the source again only when a file of it changed."""

from imgrec.data.fetch_catalog import FetchCatalogConfig, fetch_catalog
from imgrec.files import write_json
from imgrec.pipeline import stage


def main(args, config: FetchCatalogConfig) -> None:
    report, fetched = fetch_catalog(config, args.out, args.state)
    if "catalog" in report:
        print("catalog: the training data (param catalog_source is empty)")
    elif fetched:
        print(f"catalog: {report['rows_fetched']} rows from {report['files_read']} parquet file(s)")
    else:
        print(f"catalog: {args.out} is up to date with its source ({report['rows_fetched']} rows)")
    write_json(args.report, report)


if __name__ == "__main__":
    stage.run(main, FetchCatalogConfig, ["out", "report", "state"])
