"""The query command against a tiny catalog built by the pipeline's own functions."""

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from imgrec import cli
from imgrec.catalog import load_catalog, save_catalog
from imgrec.checkpoint import checkpoint_md5, load_checkpoint, save_checkpoint
from imgrec.config import PrepareConfig, TrainConfig
from imgrec.inference import embed
from imgrec.model import CNNClassifier, ModelConfig
from imgrec.preparation import prepare
from imgrec.prepared import load_prepared
from imgrec.runtime import seed_everything
from imgrec.sources import BUILTIN_DIGITS, fetch
from imgrec.training import train

IMG_SIZE = 16


@dataclass(frozen=True)
class Pipeline:
    raw: Path
    prepared: Path
    model: Path
    embeddings: Path

    def options(self) -> list[str]:
        return [
            "--model",
            str(self.model),
            "--catalog",
            str(self.embeddings),
            "--prepared",
            str(self.prepared),
            "--device",
            "cpu",
        ]

    def original_bytes(self, row_id: int) -> bytes:
        """The image as fetch stored it, before any decoding."""
        table = pq.read_table(self.raw, columns=["image"])
        return table.column("image")[row_id]["bytes"].as_py()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """fetch -> prepare -> train (1 epoch) -> embed, tiny, through the package's functions."""
    root = tmp_path_factory.mktemp("pipeline")
    raw, prepared, embeddings = root / "raw.parquet", root / "prepared", root / "embeddings"
    fetch(BUILTIN_DIGITS, 120, raw)
    prepared.mkdir()
    config = PrepareConfig(img_size=IMG_SIZE, val_fraction=0.2, seed=0, max_bad_fraction=0.0)
    prepare(raw, prepared, config, workers=1)
    data = load_prepared(prepared)
    model = CNNClassifier(ModelConfig(num_classes=len(data.class_names)))
    config = TrainConfig(epochs=1, patience=1, lr_patience=1)
    train(model, data, config, generator=seed_everything(0), device=torch.device("cpu"))
    save_checkpoint(root / "model.pt", model.cpu(), data.class_names, IMG_SIZE)
    model, _ = load_checkpoint(root / "model.pt")
    save_catalog(
        embeddings, embed(model, data.images), data.row_ids, checkpoint_md5(root / "model.pt")
    )
    return Pipeline(raw, prepared, root / "model.pt", embeddings)


@pytest.fixture
def catalog_image(pipeline: Pipeline, tmp_path: Path) -> tuple[Path, int]:
    """A catalog image's original bytes written to a file, and its row id."""
    catalog = load_catalog(pipeline.embeddings, pipeline.prepared)
    row_id = int(catalog.row_ids[catalog.val_index[3]])
    path = tmp_path / "query.png"
    path.write_bytes(pipeline.original_bytes(row_id))
    return path, row_id


def test_catalog_image_finds_itself_from_another_directory(pipeline, catalog_image, tmp_path):
    path, row_id = catalog_image
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    command = [sys.executable, "-m", "imgrec", "recommend", str(path), "--json", "--top-k", "3"]
    done = subprocess.run(
        [*command, *pipeline.options()],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    (answer,) = json.loads(done.stdout)
    assert answer["query"] == str(path)
    assert [r["rank"] for r in answer["results"]] == [1, 2, 3]
    best = answer["results"][0]
    assert best["row_id"] == row_id
    assert best["score"] > 0.999
    catalog = load_catalog(pipeline.embeddings, pipeline.prepared)
    position = catalog.positions(np.array([row_id]))[0]
    assert best["label"] == catalog.class_names[catalog.labels[position]]


def test_query_embedding_equals_the_pipelines(pipeline, catalog_image):
    path, row_id = catalog_image
    catalog = load_catalog(pipeline.embeddings, pipeline.prepared)
    position = catalog.positions(np.array([row_id]))[0]
    model, info = load_checkpoint(pipeline.model)
    images, queries = cli.query_embeddings(model, [str(path)], info["preprocessing"]["img_size"])
    np.testing.assert_array_equal(images[0], catalog.images[position])
    assert np.allclose(queries[0], catalog.embeddings[position], atol=1e-6)


def test_recommend_prints_a_table_and_writes_the_figure(pipeline, catalog_image, tmp_path, capsys):
    path, row_id = catalog_image
    figure = tmp_path / "figure.png"
    code = cli.main(["recommend", str(path), str(path), "--out", str(figure), *pipeline.options()])
    out = capsys.readouterr().out
    assert code == 0
    assert figure.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert out.count("rank  row_id") == 2
    first_row = out.splitlines()[2].split()
    assert first_row[:2] == ["1", str(row_id)]
    assert float(first_row[-1]) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("as_json", [False, True])
def test_classify_prints_a_class_and_a_probability(pipeline, catalog_image, capsys, as_json):
    path, _ = catalog_image
    class_names = load_prepared(pipeline.prepared).class_names
    flags = ["--json"] if as_json else []
    code = cli.main(["classify", str(path), *flags, "--model", str(pipeline.model)])
    out = capsys.readouterr().out
    assert code == 0
    if as_json:
        (answer,) = json.loads(out)
        image, label, probability = answer["image"], answer["label"], answer["probability"]
    else:
        header, row = out.splitlines()
        assert header.split() == ["image", "label", "probability"]
        image, label, probability = row.split()
    assert image == str(path)
    assert label in class_names
    assert 0.0 <= float(probability) <= 1.0


@pytest.mark.parametrize(
    ("missing", "mentions"),
    [("--model", "model.pt"), ("--catalog", "embeddings")],
)
def test_missing_pipeline_output_says_run_dvc_repro(
    pipeline, catalog_image, tmp_path, capsys, missing, mentions
):
    path, _ = catalog_image
    options = pipeline.options()
    options[options.index(missing) + 1] = str(tmp_path / "absent" / mentions)
    code = cli.main(["recommend", str(path), *options])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ")
    assert "dvc repro" in err


def test_undecodable_image_is_one_line_naming_the_file(pipeline, tmp_path, capsys):
    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"this is text, not pixels")
    code = cli.main(["recommend", str(bad), *pipeline.options()])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.splitlines()) == 1
    assert str(bad) in err


def test_missing_query_file_is_one_line_naming_it(pipeline, tmp_path, capsys):
    absent = tmp_path / "absent.png"
    code = cli.main(["classify", str(absent), "--model", str(pipeline.model)])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.splitlines()) == 1
    assert str(absent) in err


def test_stale_catalog_is_refused(pipeline, catalog_image, tmp_path, capsys):
    path, _ = catalog_image
    other = tmp_path / "other.pt"
    names = load_prepared(pipeline.prepared).class_names
    torch.manual_seed(1)
    save_checkpoint(other, CNNClassifier(ModelConfig(num_classes=len(names))), names, IMG_SIZE)
    options = pipeline.options()
    options[options.index("--model") + 1] = str(other)
    code = cli.main(["recommend", str(path), *options])
    err = capsys.readouterr().err
    assert code == 1
    assert "dvc repro" in err


@pytest.mark.parametrize(
    ("command", "options"),
    [
        ("recommend", ["--model", "--catalog", "--prepared", "--top-k", "--out", "--json"]),
        ("classify", ["--model", "--json"]),
    ],
)
def test_help_documents_every_option(capsys, command, options):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for option in [*options, "--device", "--batch-size", "PATH_OR_URL"]:
        assert option in out


def test_defaults_resolve_against_the_repo_root(tmp_path, monkeypatch):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    assert cli.find_repo_root() == tmp_path.resolve()
    args = cli.build_parser().parse_args(["recommend", "x.png", "--catalog", "mine"])
    cli.resolve_defaults(args, cli.find_repo_root())
    assert args.model == tmp_path.resolve() / "models" / "model.pt"
    assert args.prepared == tmp_path.resolve() / "data" / "prepared"
    assert args.catalog == "mine"  # a given path stays as typed


def test_without_a_repo_the_root_is_the_current_directory(tmp_path):
    assert cli.find_repo_root(tmp_path) == tmp_path.resolve()
