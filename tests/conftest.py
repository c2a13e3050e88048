"""Shared fixtures and builders: tiny images and parquet files made inside tmp_path."""

# isort: off
import imgrec  # noqa: F401 - first: it picks the CPU kernels before numpy and torch load
# isort: on

import importlib.util
import io
import json
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

# Files whose tests pytest-xdist may hand to either worker, one by one: each test is its own
# subprocess run, or its module fixture is a copy of the one tiny project a run reproduces
# (tiny_project.py). Every other file goes to one worker whole, so that its module fixtures
# (a trained model, a started server) are built once (pyproject.toml: --dist loadgroup).
PIPELINE_FILES = {"test_pipeline.py", "test_pipeline_reruns.py"}  # on the tiny project
SPREAD_FILES = {"test_benchmarks.py", *PIPELINE_FILES}


@pytest.fixture(scope="session", autouse=True)
def _tiny_project_built_in_the_background(request, tmp_path_factory):
    """Where the session runs a pipeline test, its tiny project is built from the start, beside
    the other tests (tiny_project.start_building)."""
    import tiny_project

    if any(item.path.name in PIPELINE_FILES for item in request.session.items):
        tiny_project.start_building(tmp_path_factory)
    yield
    tiny_project.stop_building()


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name not in SPREAD_FILES and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.path.name))


@pytest.fixture(scope="session")
def dask_scheduler() -> str:
    """The address of a 2-worker Dask cluster on localhost, shared by the whole session: what
    tests pass as the `dask_scheduler` param instead of starting a local cluster each time."""
    from distributed import LocalCluster

    from imgrec.pipeline.dask_cluster import NO_DASHBOARD

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, scheduler_kwargs=NO_DASHBOARD
    ) as cluster:
        yield cluster.scheduler_address


def image_bytes(
    size: tuple[int, int] = (8, 8),
    color: tuple[int, ...] | int = (200, 30, 60),
    mode: str = "RGB",
    fmt: str = "PNG",
    **save_kwargs,
) -> bytes:
    """A solid-colour image of `size` (width, height) encoded in `fmt`."""
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format=fmt, **save_kwargs)
    return buffer.getvalue()


def png_bytes(size: tuple[int, int] = (8, 8), color=(200, 30, 60), mode: str = "RGB") -> bytes:
    return image_bytes(size, color, mode, "PNG")


def jpeg_bytes(size: tuple[int, int] = (8, 8), color=(200, 30, 60)) -> bytes:
    return image_bytes(size, color, "RGB", "JPEG")


def hf_metadata(names: Sequence[str]) -> dict[str, str]:
    """The `huggingface` schema metadata that `datasets` writes for an Image + ClassLabel."""
    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": list(names)}}
    return {"huggingface": json.dumps({"info": {"features": features}})}


def make_parquet(
    path: str | Path,
    images_bytes: Sequence[bytes | None],
    labels: Sequence,
    row_group_size: int | None = None,
    metadata: dict | None = None,
    *,
    image_struct: bool = True,
    null_images: Sequence[int] = (),
) -> Path:
    """Write images and labels as parquet in the HF Image schema (or plain binary images).

    Each image's `path` is `img/<index>.png` so a row can be traced after a round trip;
    rows listed in `null_images` get a null image struct rather than null bytes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if image_struct:
        values = [
            None if index in null_images else {"bytes": data, "path": f"img/{index}.png"}
            for index, data in enumerate(images_bytes)
        ]
        image = pa.array(values, type=IMAGE_TYPE)
    else:
        image = pa.array(list(images_bytes), type=pa.binary())
    table = pa.table({"image": image, "label": pa.array(list(labels))})
    if metadata is not None:
        table = table.replace_schema_metadata(metadata)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def tagged_image(value: int, size: int = 4) -> bytes:
    """A PNG of `size` px whose top-left pixel is `value` grey, on noise seeded by it:
    images of different values are different images, not near-duplicates of each other
    (solid colours are: a perceptual hash sees no structure in them)."""
    pixels = np.random.default_rng(value).integers(0, 256, (size, size, 3), np.uint8)
    pixels[0, 0] = value % 256
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def tagged_images(count: int, start: int = 0) -> list[bytes]:
    """`count` distinct tiny PNGs: image i is `tagged_image(start + i)`."""
    return [tagged_image(start + i) for i in range(count)]


@pytest.fixture
def deterministic_torch():
    """Deterministic kernels on 2 threads, as a stage runs; make_deterministic changes
    process-wide torch state, so it is put back after the test."""
    import torch

    from imgrec.pipeline import runtime

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    runtime.make_deterministic(2)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic)


@pytest.fixture
def tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path, made the working directory for the test (as dvclive's fixture does)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    """A prepared dataset of 48 random 16 px images in 4 classes: 36 train, 12 validation."""
    from imgrec.data.prepared import IMAGES_FILE, save_prepared_labels

    folder = tmp_path_factory.mktemp("prepared")
    rng = np.random.default_rng(0)
    np.save(folder / IMAGES_FILE, rng.integers(0, 256, (48, 16, 16, 3), dtype=np.uint8))
    save_prepared_labels(
        folder,
        labels=np.arange(48, dtype=np.int64) % 4,
        row_ids=np.arange(48, dtype=np.int64),
        train_index=np.arange(36),
        val_index=np.arange(36, 48),  # 12: two DDP ranks score 6 each
        class_names=[str(c) for c in range(4)],
        img_size=16,
    )
    return folder


def train_stage_command(project: Path, prepared: Path, params: dict, *extra: str) -> list[str]:
    """Write `project`/params.yaml (train's defaults with `params`) and return the command
    that runs the train stage there, its outputs inside `project`."""
    import dataclasses

    defaults = {field.name: field.default for field in dataclasses.fields(stage_configs()["train"])}
    project.mkdir(exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(defaults | params))
    return [
        sys.executable, str(ROOT / "stages" / "train.py"), "--prepared", str(prepared),
        "--model", "models/model.pt", "--live-dir", "dvclive", "--metrics", "train.json",
        "--fingerprint", "kernel_fingerprint.txt", "--state", ".imgrec/train-state.pt", *extra,
    ]  # fmt: skip


def processes_in(folder: Path) -> list[int]:
    """Pids of this machine's processes whose working directory is `folder` (Linux)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(os.readlink(f"/proc/{pid}/cwd")) == folder:
                found.append(int(pid))
        except OSError:  # gone, or not ours to read
            continue
    return found


def stage_configs() -> dict[str, type]:
    """Each stage's config class, as its script's `main(args, config: ...)` declares it."""
    configs = {}
    for script in sorted((ROOT / "stages").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"stage_script_{script.stem}", script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # defines main; runs nothing under __main__
        configs[script.stem] = typing.get_type_hints(module.main)["config"]
    return configs
