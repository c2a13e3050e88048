"""Held-out hostile data through real `dvc repro`: odd bytes, odd labels, odd layouts, odd paths.

A source folder whose name holds a quote, a `$` and spaces; one file written as a single
row group with bad images and unlabeled rows among good ones; another as thousands of
one-row groups; `lr` as DVC writes small floats (`1e-05`). Everything goes through with
exact skip counts and no traceback; a file whose schema disagrees stops fetch with one
line naming it.
"""

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import IMAGE_TYPE
from PIL import Image
from tiny_project import ROOT, dvc, dvc_env

pytestmark = pytest.mark.slow

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n"
DDS = b"DDS " + (124).to_bytes(4, "little") + b"\x00" * 120
IM = b"Image type: RGB image\r\nName: x\r\nImage size (x*y): 2*2\r\n\x1a" + b"\x00" * 600


def digit(value: int, seed: int) -> bytes:
    """A bar whose row follows the label, on noise of its own: no two rows are duplicates
    (a source of four images repeated could not be split without a leak)."""
    pixels = np.random.default_rng(seed).integers(0, 96, (12, 12), np.uint8)
    pixels[2 + value % 8, :] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def write(path: Path, images: list, labels: list, row_group_size: int) -> None:
    table = pa.table(
        {
            "image": pa.array(
                [None if b is None else {"bytes": b, "path": None} for b in images], IMAGE_TYPE
            ),
            "label": pa.array(labels, pa.int64()),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, folder / name)
    for name in ("stages", "src", "labels"):  # labels: the corrections file prepare reads
        shutil.copytree(ROOT / name, folder / name, ignore=shutil.ignore_patterns("__pycache__"))
    dvc("init", "--no-scm", "-q", cwd=folder)
    return folder


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data") / """it's a $HOME "dir" `x`"""
    folder.mkdir()
    good = [digit(i % 4, seed=i) for i in range(200)]
    labels = [i % 4 for i in range(200)]
    bad = {3: b"\x89PNG\r\n\x1a\n truncated", 10: EPS, 20: DDS, 30: IM, 40: b"", 50: None}
    unlabeled = {60: None, 70: -1}
    images = [bad.get(i, blob) for i, blob in enumerate(good)]
    labels = [unlabeled.get(i, label) for i, label in enumerate(labels)]
    write(folder / "a.parquet", images, labels, row_group_size=1_000_000)  # one row group
    more = [digit(i % 4, seed=200 + i) for i in range(1500)]
    write(folder / "b.parquet", more, [i % 4 for i in range(1500)], 1)
    return folder


def repro(project: Path, params: dict, *targets: str):
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    text = yaml.safe_dump(base | params, sort_keys=False)
    # `dvc exp run -S lr=0.00001` writes `lr: 1e-05`, which PyYAML reads back as a string.
    (project / "params.yaml").write_text(text.replace("lr: '1e-05'", "lr: 1e-05"))
    return subprocess.run(
        [str(Path(sys.executable).with_name("dvc")), "repro", *targets],
        cwd=project,
        capture_output=True,
        text=True,
        env=dvc_env(project),
    )


def test_hostile_source_goes_through_with_exact_counts(project, source):
    done = repro(
        project,
        {"source": str(source), "rows": 100_000, "img_size": 16, "epochs": 1, "lr": "1e-05"},
        "train",
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    fetched = json.loads((project / "reports/fetch.json").read_text())
    assert fetched == {"rows_fetched": 1700, "files_read": 2}
    report = json.loads((project / "reports/prepare.json").read_text())
    assert report["skipped_by_reason"] == {
        "null_image": 2,  # b"" and a null struct
        "undecodable": 4,  # truncated PNG, EPS, DDS, IM
        "too_large": 0,
        "unlabeled": 2,  # null and the HF ClassLabel's -1
    }
    assert report["skipped_rows_e_g"]["undecodable"] == [3, 10, 20, 30]
    assert (report["images"], report["rows_skipped"], report["duplicate_rows"]) == (1692, 8, 0)
    assert report["corrections"]["applied"] == report["corrections"]["skipped"] == 0
    assert "raw.parquet" not in done.stderr  # no warning about the odd path
    assert pq.ParquetFile(project / "data/raw.parquet").num_row_groups == 7  # 1700 / 256


def test_a_file_whose_schema_disagrees_is_one_line_naming_it(project, source, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(source, odd)
    pq.write_table(
        pa.table({"image": pa.array([digit(1, seed=0)]), "label": ["one"]}), odd / "c.parquet"
    )
    done = repro(project, {"source": str(odd), "rows": 100_000}, "fetch")
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1
    assert "c.parquet: column 'label' is string" in errors[0]
