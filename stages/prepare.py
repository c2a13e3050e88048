"""Stage prepare: decode every image once, resize, group duplicates, split train/val
keeping each group on one side, count what was skipped."""

from imgrec import stage
from imgrec.files import atomic_dir, write_json
from imgrec.image_hashes import save_image_hashes
from imgrec.prepare import PrepareConfig, prepare


def main(args, config: PrepareConfig) -> None:
    with atomic_dir(args.out) as tmp:
        counts, hashes = prepare(args.data, tmp, config)
    save_image_hashes(args.hashes, hashes)
    # Skips by reason, duplicate groups, split sizes: counts, not scores, so a report.
    write_json(args.report, counts)


if __name__ == "__main__":
    stage.run(main, PrepareConfig, ["data", "out", "hashes", "report"])
