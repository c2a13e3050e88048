"""Stage prepare: decode every image once, resize, apply the reviewed label corrections,
group duplicates, split train/val keeping each group on one side, count what was skipped."""

from imgrec.data import corrections
from imgrec.data.image_hashes import save_image_hashes
from imgrec.data.prepare import PrepareConfig, prepare
from imgrec.files import atomic_dir, write_json
from imgrec.pipeline import stage


def main(args, config: PrepareConfig) -> None:
    reviewed = corrections.load(args.corrections)  # a missing file: no corrections
    with atomic_dir(args.out) as tmp:
        counts, hashes = prepare(args.data, tmp, config, reviewed)
    save_image_hashes(args.hashes, hashes)
    # Skips by reason, duplicate groups, split sizes, corrections applied and skipped: counts,
    # not scores, so a report (`dvc metrics diff reports/prepare.json` compares them).
    write_json(args.report, counts)


if __name__ == "__main__":
    stage.run(main, PrepareConfig, ["data", "corrections", "out", "hashes", "report"])
