"""Stage prepare_catalog: the catalog's images decoded, resized and grouped as prepare does
the training data's, at the model's img_size, but kept whole (no split; unlabeled rows
stay); or, when the catalog is the training data, that data's prepared images."""

from imgrec.data.image_hashes import load_image_hashes, save_image_hashes
from imgrec.data.prepare_catalog import PrepareCatalogConfig, catalog_from_training, prepare_catalog
from imgrec.data.raw_parquet import is_training_data_marker
from imgrec.files import atomic_dir, write_json
from imgrec.pipeline import stage


def main(args, config: PrepareCatalogConfig) -> None:
    with atomic_dir(args.out) as tmp:
        if is_training_data_marker(args.data):
            training_hashes = load_image_hashes(args.training_hashes)
            counts, hashes = catalog_from_training(args.training, training_hashes, tmp)
        else:
            counts, hashes = prepare_catalog(args.data, tmp, config)
    save_image_hashes(args.hashes, hashes)
    write_json(args.report, counts)


if __name__ == "__main__":
    paths = ["data", "training", "training_hashes", "out", "hashes", "report"]
    stage.run(main, PrepareCatalogConfig, paths)
