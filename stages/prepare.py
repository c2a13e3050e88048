"""Stage prepare: decode every image once, resize, apply the reviewed label corrections,
group duplicates, split train/val keeping each group on one side, count what was skipped."""

from imgrec import corrections, stage
from imgrec.files import atomic_dir, write_json
from imgrec.image_hashes import save_image_hashes
from imgrec.prepare import PrepareConfig, prepare


def main(args, config: PrepareConfig) -> None:
    reviewed = corrections.load(args.corrections)  # a missing file: no corrections
    with atomic_dir(args.out) as tmp:
        counts, hashes = prepare(args.data, tmp, config, reviewed)
    save_image_hashes(args.hashes, hashes)
    write_json(args.report, counts)  # skips by reason, duplicate groups, split sizes
    headline = {
        "rows_used": counts["images"],
        "rows_skipped": counts["rows_skipped"],
        "duplicate_rows": counts["duplicate_rows"],
        "corrections_applied": counts["corrections"]["applied"],
        "corrections_skipped": counts["corrections"]["skipped"],
    }
    write_json(args.metrics, headline)


if __name__ == "__main__":
    stage.run(main, PrepareConfig, ["data", "corrections", "out", "hashes", "metrics", "report"])
