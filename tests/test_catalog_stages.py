"""The catalog's own fetch and prepare (fetch_catalog, prepare_catalog), and what labels a
catalog may lack mean to the metrics and the audit."""

import numpy as np
import pytest
from conftest import make_parquet, tagged_images

from imgrec.data.fetch_catalog import FetchCatalogConfig, fetch_catalog, source_state
from imgrec.data.prepare import PrepareConfig, prepare
from imgrec.data.prepare_catalog import PrepareCatalogConfig, catalog_from_training, prepare_catalog
from imgrec.data.prepared import UNLABELED, label_name, load_prepared
from imgrec.data.raw_parquet import is_training_data_marker
from imgrec.recommender.audit import suspect_labels
from imgrec.recommender.recommend import retrieval_metrics


@pytest.fixture
def source(tmp_path):
    folder = tmp_path / "catalog"
    make_parquet(folder / "0000.parquet", tagged_images(30), [0, 1, 2] * 10)
    return folder


def fetch_config(source, dask_scheduler, **changes) -> FetchCatalogConfig:
    values = {"catalog_source": str(source), "dask_scheduler": dask_scheduler} | changes
    return FetchCatalogConfig(**values)


def test_an_empty_catalog_source_is_the_training_data(tmp_path):
    report, fetched = fetch_catalog(FetchCatalogConfig(), tmp_path / "raw.parquet", tmp_path / "s")
    assert report == {"catalog": "the training data"} and not fetched
    assert is_training_data_marker(tmp_path / "raw.parquet")


def test_an_unchanged_source_is_not_read_again_and_an_appended_file_is(
    source, tmp_path, dask_scheduler
):
    out, state = tmp_path / "raw.parquet", tmp_path / "state.json"
    config = fetch_config(source, dask_scheduler)
    assert fetch_catalog(config, out, state) == ({"rows_fetched": 30, "files_read": 1}, True)
    assert fetch_catalog(config, out, state) == ({"rows_fetched": 30, "files_read": 1}, False)
    make_parquet(source / "0001.parquet", tagged_images(5, start=30), [0] * 5)
    assert fetch_catalog(config, out, state) == ({"rows_fetched": 35, "files_read": 2}, True)
    assert not is_training_data_marker(out)


def test_another_output_or_row_cap_is_fetched_again(source, tmp_path, dask_scheduler):
    out, state = tmp_path / "raw.parquet", tmp_path / "state.json"
    fetch_catalog(fetch_config(source, dask_scheduler), out, state)
    out.write_bytes(b"something else, say a dvc checkout of another version")
    assert fetch_catalog(fetch_config(source, dask_scheduler), out, state)[1]
    capped = fetch_config(source, dask_scheduler, catalog_rows=10)
    assert fetch_catalog(capped, out, state) == ({"rows_fetched": 10, "files_read": 1}, True)


def test_the_source_state_follows_a_rewritten_file(source):
    before = source_state(str(source), 100)
    make_parquet(source / "0000.parquet", tagged_images(31), [0] * 31)
    assert source_state(str(source), 100) != before
    assert source_state(str(source), 100) == source_state(str(source), 100)


def test_a_catalog_keeps_unlabeled_rows_and_has_no_split(tmp_path, dask_scheduler):
    parquet = make_parquet(tmp_path / "raw.parquet", tagged_images(6), [0, None, 1, 0, None, 1])
    (tmp_path / "prepared").mkdir()
    config = PrepareCatalogConfig(img_size=4, dask_scheduler=dask_scheduler)
    counts, hashes = prepare_catalog(parquet, tmp_path / "prepared", config)
    data = load_prepared(tmp_path / "prepared")
    assert data.labels.tolist() == [0, UNLABELED, 1, 0, UNLABELED, 1]
    assert data.class_names == ["0", "1"]
    assert len(data.train_index) == len(data.val_index) == 0
    assert counts["unlabeled_images"] == 2 and counts["skipped_by_reason"]["unlabeled"] == 0
    assert hashes.row_ids.tolist() == list(range(6))
    assert [label_name(data.class_names, label) for label in data.labels[:2]] == ["0", None]


def test_the_training_data_as_catalog_is_its_prepared_images_unchanged(tmp_path, dask_scheduler):
    parquet = make_parquet(tmp_path / "raw.parquet", tagged_images(20), [0, 1] * 10)
    (tmp_path / "prepared").mkdir()
    config = PrepareConfig(img_size=4, val_fraction=0.25, dask_scheduler=dask_scheduler)
    _, hashes = prepare(parquet, tmp_path / "prepared", config)
    (tmp_path / "catalog").mkdir()
    counts, catalog_hashes = catalog_from_training(
        tmp_path / "prepared", hashes, tmp_path / "catalog"
    )
    for file in (tmp_path / "prepared").iterdir():
        assert (tmp_path / "catalog" / file.name).read_bytes() == file.read_bytes()
    assert catalog_hashes is hashes and counts["images"] == 20


def test_retrieval_metrics_judge_labelled_items_and_an_unlabeled_neighbour_is_a_miss():
    labels = np.array([0, 0, UNLABELED, 1, 1])
    neighbors = np.array([[1, 2], [0, 3], [0, 1], [4, 2], [3, 0]])  # positions, top 2
    metrics = retrieval_metrics(labels[neighbors], labels)
    # Judged: items 0, 1, 3, 4; hits at rank 1 of each, none at rank 2.
    assert metrics["precision@k"] == pytest.approx(0.5)
    unlabeled = np.full(3, UNLABELED)
    assert retrieval_metrics(unlabeled[[[1], [0], [0]]], unlabeled) == {
        "precision@k": None,
        "map@k": None,
    }


def test_unlabeled_items_are_never_suspect_and_cast_no_vote():
    labels = np.array([0, UNLABELED, 1])
    neighbor_labels = np.array([[UNLABELED, 1], [0, 1], [UNLABELED, UNLABELED]])
    scores = np.array([[0.9, 0.1], [0.9, 0.9], [0.9, 0.9]], np.float32)
    score, _ = suspect_labels(labels, neighbor_labels, scores, n_classes=2)
    assert score[0] == pytest.approx(1.0)  # its one labelled neighbour disagrees
    assert score[1] == 0 and score[2] == 0  # unlabeled; no labelled neighbour


def test_a_catalog_file_without_a_label_column_is_fetched_unlabeled(
    source, tmp_path, dask_scheduler
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imgrec.data.raw_parquet import IMAGE_TYPE

    images = [{"bytes": b, "path": None} for b in tagged_images(4, start=30)]
    pq.write_table(pa.table({"image": pa.array(images, IMAGE_TYPE)}), source / "0001.parquet")
    out = tmp_path / "raw.parquet"
    report, _ = fetch_catalog(fetch_config(source, dask_scheduler), out, tmp_path / "state")
    assert report["rows_fetched"] == 34
    assert pq.read_table(out).column("label").to_pylist()[-5:] == [2, None, None, None, None]


def test_the_training_data_still_needs_its_label_column(tmp_path, dask_scheduler):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from imgrec.data.fetch import fetch
    from imgrec.data.raw_parquet import IMAGE_TYPE
    from imgrec.errors import ImgrecError

    images = [{"bytes": b, "path": None} for b in tagged_images(4)]
    pq.write_table(pa.table({"image": pa.array(images, IMAGE_TYPE)}), tmp_path / "x.parquet")
    with pytest.raises(ImgrecError, match="has no 'label' column"):
        fetch(
            str(tmp_path / "x.parquet"), 10, tmp_path / "out.parquet", dask_scheduler=dask_scheduler
        )
