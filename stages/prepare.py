"""Stage prepare: decode every image once, resize, split train/val, count what was skipped."""

from imgrec import stage
from imgrec.files import atomic_dir, write_json
from imgrec.prepare import PrepareConfig, prepare


def main(args, config: PrepareConfig) -> None:
    with atomic_dir(args.out) as tmp:
        counts = prepare(args.data, tmp, config)
    write_json(args.report, counts)  # skips by reason, split sizes: opened on purpose
    headline = {"rows_used": counts["images"], "rows_skipped": counts["rows_skipped"]}
    write_json(args.metrics, headline)


if __name__ == "__main__":
    stage.run(main, PrepareConfig, ["data", "out", "metrics", "report"])
