"""The query command against a tiny catalog built by the pipeline's own functions."""

import functools
import http.server
import json
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from imgrec import cli
from imgrec.data.fetch import BUILTIN_DIGITS, fetch
from imgrec.data.prepare import PrepareConfig, prepare
from imgrec.data.prepared import load_prepared, prepared_md5
from imgrec.pipeline.runtime import seed_everything
from imgrec.recommender.catalog import load_catalog, save_catalog
from imgrec.recommender.embed import no_close_match_threshold
from imgrec.serving import query
from imgrec.training.checkpoint import checkpoint_md5, load_checkpoint, save_checkpoint
from imgrec.training.inference import embed
from imgrec.training.model import CNNClassifier, ModelConfig
from imgrec.training.train import TrainConfig, train

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
def pipeline(tmp_path_factory: pytest.TempPathFactory, dask_scheduler: str) -> Pipeline:
    """fetch -> prepare -> train (1 epoch) -> embed, tiny, through the package's functions."""
    root = tmp_path_factory.mktemp("pipeline")
    raw, prepared, embeddings = root / "raw.parquet", root / "prepared", root / "embeddings"
    fetch(BUILTIN_DIGITS, 120, raw)
    prepared.mkdir()
    config = PrepareConfig(
        img_size=IMG_SIZE, val_fraction=0.2, seed=0, max_bad_fraction=0.0,
        dask_scheduler=dask_scheduler,
    )  # fmt: skip
    prepare(raw, prepared, config)
    data = load_prepared(prepared)
    model = CNNClassifier(ModelConfig(num_classes=len(data.class_names)))
    config = TrainConfig(epochs=1, patience=1, lr_patience=1)
    train(model, data, config, generator=seed_everything(0), device=torch.device("cpu"))
    save_checkpoint(
        root / "model.pt", model.cpu(), data.class_names, IMG_SIZE,
        train_config=config.identity(1), prepared_md5=prepared_md5(prepared),
    )  # fmt: skip
    model = load_checkpoint(root / "model.pt").model
    appearance = embed(model, data.images, space="appearance")
    save_catalog(
        embeddings,
        embed(model, data.images),
        appearance,
        data.row_ids,
        checkpoint_md5(root / "model.pt"),
        no_close_match_threshold(appearance, data.train_index, data.val_index),
    )
    return Pipeline(raw, prepared, root / "model.pt", embeddings)


@pytest.fixture(scope="module")
def audited(pipeline: Pipeline, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The audit's report and the image hashes for the pipeline's catalog, made by the
    audit's own function with the catalog's model: the options that point the query at them."""
    from imgrec.data import duplicates
    from imgrec.data.image_hashes import ImageHashes, save_image_hashes
    from imgrec.recommender.audit import AuditConfig, audit, copy_similarity_threshold
    from imgrec.recommender.audit_report import save_report

    root = tmp_path_factory.mktemp("audited")
    catalog = load_catalog(pipeline.embeddings, pipeline.prepared)
    prints = [duplicates.fingerprint(np.asarray(image)) for image in catalog.images]
    groups, _ = duplicates.duplicate_groups(prints, max_bits=4)
    hashes = ImageHashes(catalog.row_ids, prints, catalog.row_ids[groups], 4)
    save_image_hashes(root / "hashes.parquet", hashes)
    model = load_checkpoint(pipeline.model).model
    copy_cosine = copy_similarity_threshold(catalog, lambda x: embed(model, x))
    report, _ = audit(catalog, hashes, copy_cosine, AuditConfig())
    save_report(root / "audit.json", report)
    return ["--audit", str(root / "audit.json"), "--hashes", str(root / "hashes.parquet")]


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


def test_a_catalog_image_is_its_own_duplicate_and_left_out(pipeline, audited, catalog_image):
    path, row_id = catalog_image
    command = [sys.executable, "-m", "imgrec", "recommend", str(path), "--json", "--top-k", "4"]
    done = subprocess.run([*command, *pipeline.options(), *audited], capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (answer,) = json.loads(done.stdout)
    assert row_id in answer["duplicate_of"]
    listed = [r["row_id"] for r in answer["results"]]
    assert len(listed) == 4 and not set(listed) & set(answer["duplicate_of"])
    from imgrec.recommender.audit_report import load_report

    catalog = load_catalog(pipeline.embeddings, pipeline.prepared)
    groups = load_report(audited[1]).duplicate_groups(catalog.row_ids)
    listed_groups = groups[catalog.positions(np.array(listed))]
    assert len(set(listed_groups.tolist())) == 4  # no two duplicates of each other
    shown = subprocess.run([*command[:-3], *pipeline.options(), *audited], capture_output=True,
                           text=True, check=False)  # fmt: skip
    assert f"duplicates catalog item(s) {row_id}" in shown.stdout


def test_query_embedding_equals_the_pipelines(pipeline, catalog_image):
    path, row_id = catalog_image
    catalog = load_catalog(pipeline.embeddings, pipeline.prepared)
    position = catalog.positions(np.array([row_id]))[0]
    checkpoint = load_checkpoint(pipeline.model)
    model = checkpoint.model
    images, failed = query.load_images([str(path)], checkpoint.img_size)
    assert failed == {}
    np.testing.assert_array_equal(images[0], catalog.images[position])
    assert np.allclose(embed(model, images)[0], catalog.embeddings[position], atol=1e-6)


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
    code = cli.main(["classify", str(path), *flags, *pipeline.options()])
    out = capsys.readouterr().out
    assert code == 0
    if as_json:
        (answer,) = json.loads(out)
        image, label, probability = answer["image"], answer["label"], answer["probability"]
        assert answer["no_close_match"] is False  # a catalog image is like the catalog
    else:
        header, row = out.splitlines()
        assert header.split() == ["image", "label", "probability", "catalog"]
        image, label, probability = row.split()
    assert image == str(path)
    assert label in class_names
    assert 0.0 <= float(probability) <= 1.0


def test_classify_without_a_catalog_answers_and_says_it_cannot_flag(
    pipeline, catalog_image, tmp_path, capsys
):
    path, _ = catalog_image
    options = ["--model", str(pipeline.model), "--catalog", str(tmp_path / "none"), "--json"]
    code = cli.main(["classify", str(path), *options, "--prepared", str(pipeline.prepared)])
    captured = capsys.readouterr()
    assert code == 0
    assert json.loads(captured.out)[0]["no_close_match"] is None
    assert captured.err.startswith("warning: no novelty check (no catalog in ")


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
    assert str(tmp_path / "absent" / mentions) in err


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
    code = cli.main(["classify", str(absent), *pipeline.options()])
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.splitlines()) == 1
    assert str(absent) in err


def test_stale_catalog_is_refused(pipeline, catalog_image, tmp_path, capsys):
    path, _ = catalog_image
    other = tmp_path / "other.pt"
    names = load_prepared(pipeline.prepared).class_names
    torch.manual_seed(1)
    save_checkpoint(
        other, CNNClassifier(ModelConfig(num_classes=len(names))), names, IMG_SIZE,
        train_config=TrainConfig().identity(1), prepared_md5="",
    )  # fmt: skip
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
        ("classify", ["--model", "--catalog", "--prepared", "--json"]),
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
    assert query.find_repo_root() == tmp_path.resolve()
    args = cli.build_parser().parse_args(["recommend", "x.png", "--catalog", "mine"])
    cli.resolve_defaults(args, query.find_repo_root())
    assert args.model == tmp_path.resolve() / "models" / "model.pt"
    assert args.prepared == tmp_path.resolve() / "data" / "catalog" / "prepared"
    assert args.catalog == "mine"  # a given path stays as typed


def test_without_a_repo_the_root_is_the_current_directory(tmp_path):
    assert query.find_repo_root(tmp_path) == tmp_path.resolve()


def one_error_line(err: str) -> str:
    """The only line on stderr, which must be an `error:` line."""
    assert "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith("error: ")
    return line


# Bytes PIL's plugins choke on in ways other than "cannot identify image file".
_DDS_UNKNOWN_PIXEL_FORMAT = (
    b"DDS "
    + struct.pack("<7I", 124, 0x1007, 4, 4, 0, 0, 0)  # size, flags, height, width, ...
    + bytes(44)
    + struct.pack("<2I4s5I", 32, 0x4, b"ZZZZ", 0, 0, 0, 0, 0)  # FOURCC "ZZZZ": no such format
    + bytes(20 + 64)
)
_IM_HEADER = b"Image type: RGB image\r\nName: x\r\n\x1a" + bytes(600)
_RANDOM = np.random.default_rng(0).bytes(300)


@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize(
    "bad_bytes",
    [
        pytest.param(_DDS_UNKNOWN_PIXEL_FORMAT, id="dds"),
        pytest.param(_IM_HEADER, id="im"),
        pytest.param(_RANDOM, id="random"),
        pytest.param(None, id="missing"),
    ],
)
def test_a_bad_file_in_a_batch_is_skipped_and_the_rest_answered(
    pipeline, catalog_image, tmp_path, capsys, bad_bytes, as_json
):
    path, row_id = catalog_image
    bad = tmp_path / "bad.png"
    if bad_bytes is not None:  # None: the file is missing
        bad.write_bytes(bad_bytes)
    flags = ["--json"] if as_json else []
    code = cli.main(["recommend", str(path), str(bad), str(path), *flags, *pipeline.options()])
    out, err = capsys.readouterr()
    assert code == 1
    (warning,) = err.splitlines()
    assert warning.startswith(f"warning: {bad} skipped: ")
    if as_json:
        first, skipped, last = json.loads(out)
        assert first == last
        assert first["results"][0]["row_id"] == row_id
        assert skipped == {"query": str(bad), "error": skipped["error"]}
        assert skipped["error"] in warning
    else:
        assert out.count("rank  row_id") == 2
        assert str(bad) not in out


def test_classify_answers_the_usable_images_in_a_batch(pipeline, catalog_image, tmp_path, capsys):
    path, _ = catalog_image
    absent = tmp_path / "absent.png"
    code = cli.main(["classify", str(absent), str(path), "--json", *pipeline.options()])
    out, err = capsys.readouterr()
    assert code == 1
    skipped, answered = json.loads(out)
    assert skipped == {"image": str(absent), "error": "not found"}
    assert answered["image"] == str(path)
    assert err == f"warning: {absent} skipped: not found.\n"


def test_when_no_image_in_a_batch_is_usable_it_is_an_error(pipeline, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(_RANDOM)
    absent = tmp_path / "absent.png"
    code = cli.main(["classify", str(bad), str(absent), *pipeline.options()])
    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    *warnings, last = err.splitlines()
    assert [w.split(" skipped: ")[0] for w in warnings] == [f"warning: {bad}", f"warning: {absent}"]
    assert last == "error: none of the 2 images could be used."


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves its folder, answers 500 for /broken.png, and logs nothing."""

    def do_HEAD(self):
        if self.path == "/broken.png":
            self.send_error(500)
        else:
            super().do_HEAD()

    def do_GET(self):
        if self.path == "/broken.png":
            self.send_error(500)
        else:
            super().do_GET()

    def log_message(self, format, *args):  # not onto the test's stderr
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A web server on 127.0.0.1 serving a folder: (its URL, the folder)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
        server.shutdown()
        thread.join()


def test_an_image_url_is_answered(pipeline, catalog_image, http_root, capsys):
    path, _ = catalog_image
    url, folder = http_root
    (folder / "query.png").write_bytes(path.read_bytes())
    code = cli.main(["classify", f"{url}/query.png", "--json", *pipeline.options()])
    (answer,) = json.loads(capsys.readouterr().out)
    assert code == 0
    assert answer["image"] == f"{url}/query.png"


@pytest.mark.parametrize(
    ("name", "reason"), [("absent.png", "not found (HTTP 404)"), ("broken.png", "HTTP 500")]
)
def test_an_http_error_says_what_the_server_answered(pipeline, http_root, capsys, name, reason):
    url, _ = http_root
    code = cli.main(["classify", f"{url}/{name}", *pipeline.options()])
    line = one_error_line(capsys.readouterr().err)
    assert code == 1
    assert line.startswith(f"error: {url}/{name}: {reason}")


def test_an_unreachable_url_says_it_could_not_connect(pipeline, capsys):
    # A port bound but not listening refuses connections, and no one else can take it meanwhile.
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}/x.png"
        code = cli.main(["classify", url, *pipeline.options()])
    line = one_error_line(capsys.readouterr().err)
    assert code == 1
    assert line.startswith(f"error: {url}: could not connect")
    assert "not found" not in line


@pytest.mark.parametrize(
    ("out", "is_blocked_by"),
    [("folder", lambda out: out.mkdir()), ("file/figure.png", lambda out: out.parent.touch())],
)
def test_an_unwritable_figure_comes_after_the_results(
    pipeline, catalog_image, tmp_path, capsys, out, is_blocked_by
):
    path, row_id = catalog_image
    out = tmp_path / out
    is_blocked_by(out)
    code = cli.main(["recommend", str(path), "--json", "--out", str(out), *pipeline.options()])
    stdout, err = capsys.readouterr()
    assert code == 1
    (answer,) = json.loads(stdout)
    assert answer["results"][0]["row_id"] == row_id
    assert one_error_line(err).startswith(f"error: cannot write {out}: ")


@pytest.mark.parametrize(
    ("suffix", "magic"),
    [
        ("png", b"\x89PNG\r\n\x1a\n"),
        ("jpg", b"\xff\xd8"),
        ("jpeg", b"\xff\xd8"),
        ("svg", b"<?xml"),
        ("pdf", b"%PDF"),
    ],
)
def test_the_figure_format_follows_the_extension(
    pipeline, catalog_image, tmp_path, capsys, suffix, magic
):
    path, _ = catalog_image
    figure = tmp_path / f"figure.{suffix}"
    code = cli.main(
        ["recommend", str(path), "--top-k", "2", "--out", str(figure), *pipeline.options()]
    )
    assert code == 0, capsys.readouterr().err
    assert figure.read_bytes().startswith(magic)
    if suffix == "svg":
        assert b"<svg" in figure.read_bytes()


@pytest.mark.parametrize("as_json", [False, True])
def test_a_reader_that_leaves_early_ends_the_command_quietly(pipeline, catalog_image, as_json):
    path, _ = catalog_image
    catalog_size = len(load_catalog(pipeline.embeddings, pipeline.prepared).row_ids)
    # Far more than a pipe holds (64 KiB on Linux), so the command is still writing.
    queries = [str(path)] * 40
    flags = ["--json"] if as_json else []
    command = [sys.executable, "-m", "imgrec", "recommend", *queries, "--top-k", str(catalog_size)]
    with subprocess.Popen(
        [*command, *flags, *pipeline.options()], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as child:
        assert child.stdout.read(1)
        child.stdout.close()
        err = child.stderr.read().decode()
    assert child.returncode == cli.EXIT_BROKEN_PIPE, err
    assert "Traceback" not in err
    assert "BrokenPipe" not in err
    assert "error" not in err


def test_a_model_path_that_is_a_folder_is_one_line(pipeline, catalog_image, tmp_path, capsys):
    path, _ = catalog_image
    code = cli.main(["classify", str(path), "--model", str(tmp_path)])
    assert code == 1
    assert str(tmp_path) in one_error_line(capsys.readouterr().err)


def test_top_k_beyond_the_catalog_is_one_line(pipeline, catalog_image, capsys):
    path, _ = catalog_image
    catalog_size = len(load_catalog(pipeline.embeddings, pipeline.prepared).row_ids)
    top_k = str(catalog_size + 1)
    code = cli.main(["recommend", str(path), "--top-k", top_k, *pipeline.options()])
    assert code == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"--top-k {top_k}" in line
    assert str(catalog_size) in line


def test_a_catalog_missing_its_arrays_is_one_line(pipeline, catalog_image, tmp_path, capsys):
    path, _ = catalog_image
    half = tmp_path / "embeddings"
    half.mkdir()
    (half / "meta.json").write_bytes((pipeline.embeddings / "meta.json").read_bytes())
    options = pipeline.options()
    options[options.index("--catalog") + 1] = str(half)
    code = cli.main(["recommend", str(path), *options])
    assert code == 1
    assert str(half) in one_error_line(capsys.readouterr().err)


def test_a_bug_is_one_line_unless_debugging(pipeline, catalog_image, capsys, monkeypatch):
    path, _ = catalog_image

    def broken(*args, **kwargs):
        raise RuntimeError("first line\nsecond line")

    monkeypatch.setattr(query, "search", broken)
    code = cli.main(["recommend", str(path), *pipeline.options()])
    line = one_error_line(capsys.readouterr().err)
    assert code == 1
    assert line.startswith("error: unexpected RuntimeError: first line")
    monkeypatch.setenv("IMGREC_DEBUG", "1")
    with pytest.raises(RuntimeError, match="first line"):
        cli.main(["recommend", str(path), *pipeline.options()])


def test_a_photo_is_unlike_the_digits_and_a_catalog_image_is_not(pipeline, catalog_image):
    """The flag in --json: scikit-learn's photo of a building among handwritten digits."""
    import sklearn.datasets

    photo = Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"
    path, _ = catalog_image
    command = [sys.executable, "-m", "imgrec", "recommend", str(photo), str(path), "--json"]
    done = subprocess.run(
        [*command, *pipeline.options()], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    photo_answer, catalog_answer = json.loads(done.stdout)
    assert photo_answer["no_close_match"] is True
    assert catalog_answer["no_close_match"] is False
    assert photo_answer["appearance_similarity"] < catalog_answer["appearance_similarity"]
    table = subprocess.run(
        [*command[:-1], *pipeline.options()], capture_output=True, text=True, check=True
    ).stdout
    assert table.count("no close match: unlike every catalog image") == 1


@pytest.mark.parametrize(
    ("config", "pull"),
    [(None, False), ("[core]\n    autostage = true\n", False),
     ("[core]\n    remote = store\n['remote \"store\"']\n    url = /tmp/store\n", True)],
)  # fmt: skip
def test_dvc_pull_is_suggested_only_where_a_remote_is_configured(
    tmp_path, monkeypatch, capsys, config, pull
):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    if config is not None:
        (tmp_path / ".dvc").mkdir()
        (tmp_path / ".dvc" / "config").write_text(config)
    monkeypatch.chdir(tmp_path)
    assert query.has_dvc_remote() is pull
    code = cli.main(["classify", "x.png"])  # no models/model.pt here
    err = capsys.readouterr().err
    assert code == 1 and len(err.splitlines()) == 1
    assert "run `dvc repro`" in err
    assert ("dvc pull" in err) is pull
