"""benchmarks/run.py in smoke mode: every stage runs and prints its table, so it cannot rot."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
# Each stage's table: its two sides and the rows that must hold a positive, finite ratio.
EXPECTED = {
    "fetch": ("imgrec", "seed", ["images/s", "peak RSS MB"]),
    "prepare": ("imgrec", "seed", ["images/s", "peak RSS MB"]),
    "train": ("imgrec", "seed", ["images/s", "peak RSS MB"]),
    "embed": ("imgrec", "seed", ["images/s", "peak RSS MB"]),
    "recommend": ("imgrec", "seed", ["seconds, top-k of every item", "peak RSS MB"]),
    "kernels": ("native", "portable", ["train images/s", "embed images/s", "peak RSS MB"]),
}

pytestmark = pytest.mark.slow


def tables(output: str) -> dict[str, tuple[str, dict[str, list[str]]]]:
    """{stage: (header row, {metric: cells})} from the runner's Markdown."""
    found = {}
    for section in re.split(r"^## ", output, flags=re.MULTILINE)[1:]:
        stage = section.split(":", 1)[0]
        lines = [line.strip(" |") for line in section.splitlines() if line.startswith("| ")]
        rows = [[cell.strip() for cell in line.split("|")] for line in lines]
        found[stage] = (" | ".join(rows[0]), {row[0]: row[1:] for row in rows[1:]})
    return found


def test_smoke_run_prints_every_stage_with_finite_ratios(tmp_path: Path):
    command = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke"]
    command += ["--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "work")]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    found = tables(run.stdout)
    assert list(found) == list(EXPECTED)
    for stage, (a, b, metrics) in EXPECTED.items():
        header, rows = found[stage]
        assert header.startswith(f"metric | {a} | {b} | ratio {a}/{b}"), (stage, header)
        for metric in metrics:
            value_a, value_b, ratio, _ = rows[metric]
            assert float(value_a) > 0 and float(value_b) > 0, (stage, metric, rows[metric])
            assert math.isfinite(float(ratio)) and float(ratio) > 0, (stage, metric, ratio)
    assert "kernels native: torch" in run.stdout and "kernels portable: torch" in run.stdout
    assert (tmp_path / "data" / "catalog-200" / "manifest.json").exists()


def test_indexes_smoke_run_prints_recall_for_every_setting(tmp_path: Path):
    from imgrec.data.prepared import IMAGES_FILE, save_prepared_labels
    from imgrec.recommender.catalog import save_catalog

    # A catalog of 120 items in three clusters, beside a prepared dataset of blank images.
    labels, row_ids = np.arange(120) % 3, np.arange(120)
    (tmp_path / "prepared").mkdir()
    np.save(tmp_path / "prepared" / IMAGES_FILE, np.zeros((120, 4, 4, 3), np.uint8))
    save_prepared_labels(
        tmp_path / "prepared", labels=labels, row_ids=row_ids, train_index=row_ids[:90],
        val_index=row_ids[90:], class_names=["a", "b", "c"], img_size=4,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    centres = np.abs(rng.normal(size=(3, 16)))
    vectors = np.abs(centres[labels] + 0.3 * rng.normal(size=(120, 16)))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    save_catalog(tmp_path / "catalog", vectors, vectors, row_ids, "md5", 0.5)

    command = [sys.executable, str(ROOT / "benchmarks" / "indexes.py")]
    command += ["--embeddings", str(tmp_path / "catalog"), "--prepared", str(tmp_path / "prepared")]
    command += ["--vectors", "3000", "--queries", "20", "--single-queries", "5"]
    command += ["--index", "ivf", "--index", "hnsw:hnsw_m=8"]
    command += ["--nprobe", "1,4", "--ef-search", "16"]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    rows = [line.strip(" |").split(" | ") for line in run.stdout.splitlines() if line[:2] == "| "]
    searches = ["-", "ivf_nprobe=1", "ivf_nprobe=4", "hnsw_ef_search=16"]
    assert [row[3] for row in rows[1:]] == searches
    assert rows[1][4] == "1 (truth)"
    recalls = [float(row[4]) for row in rows[2:]]
    assert all(0 < value <= 1 for value in recalls) and recalls[0] <= recalls[1]
    assert all(float(cell) > 0 for row in rows[1:] for cell in row[5:]), rows
    assert "(nlist 76)" in rows[2][0]  # 3000 vectors: 39 training points per list at most


def test_resume_smoke_run_prints_the_cost_of_saving(tmp_path: Path):
    command = [sys.executable, str(ROOT / "benchmarks" / "resume.py")]
    command += ["--images", "80", "--batches", "2", "--rounds", "1"]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    _, rows = tables(run.stdout)["resume"]
    metrics = ("seconds per saved state", "MB per saved state", "seconds per epoch, no state saved")
    for metric in (*metrics, "one save's share of an epoch"):
        value = float(rows[metric][0].split()[0])
        assert math.isfinite(value) and value > 0, rows
    assert float(rows["MB per saved state"][0]) > 30  # weights, Adam's two moments, best weights


@pytest.fixture(scope="module")
def serve_folders(tmp_path_factory) -> list[str]:
    """--data-dir and --work-dir for both serve benchmarks: their smoke runs serve the same
    100 rows at 32 px, which the first builds and the second finds built."""
    folder = tmp_path_factory.mktemp("serve")
    return ["--data-dir", str(folder / "data"), "--work-dir", str(folder / "work")]


@pytest.mark.xdist_group("serve_folders")
def test_serve_smoke_run_answers_every_request(tmp_path: Path, serve_folders):
    command = [sys.executable, str(ROOT / "benchmarks" / "serve.py"), "--smoke", *serve_folders]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    rows = [line.strip(" |").split(" | ") for line in run.stdout.splitlines() if line[:2] == "| "]
    assert rows[0][:6] == ["clients", "requests", "errors", "requests/s", "p50 ms", "p99 ms"]
    assert [(row[0], row[1], row[2]) for row in rows[1:]] == [
        ("1", "8", "0"), ("2", "8", "0"), ("2", "16", "0")
    ]  # fmt: skip
    assert all(
        math.isfinite(float(cell)) and float(cell) > 0 for row in rows[1:] for cell in row[3:]
    )
    assert re.search(r"server PSS: \d+ MB loaded, before any query; peak RSS of a process \d+ MB",
                     run.stdout), run.stdout  # fmt: skip
    assert "identical bits: " in run.stdout


@pytest.mark.xdist_group("serve_folders")
def test_serve_hostile_smoke_run_answers_beside_idle_sockets(tmp_path: Path, serve_folders):
    command = [sys.executable, str(ROOT / "benchmarks" / "serve_hostile.py"), "--smoke"]
    command += serve_folders
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [line.strip(" |").split(" | ") for line in run.stdout.splitlines() if line[:2] == "| "]
    assert [row[:2] + row[3:4] for row in rows[1:3]] == [["0", "200", "200"], ["10", "200", "200"]]
    assert rows[4][:2] == ["default", "200"]  # 3000x3000 16-bit: 77 MB, within the budget
    assert "SIGTERM with a stalled upload: exited after " in run.stdout


def tiny_catalog(folder: Path, n: int, train: int) -> None:
    """`folder`/prepared (blank 4 px images, 3 classes, the first `train` rows the training
    split) and `folder`/catalog (vectors clustered by class), as the stages would save them."""
    from imgrec.data.prepared import IMAGES_FILE, save_prepared_labels
    from imgrec.recommender.catalog import save_catalog

    labels, row_ids = np.arange(n) % 3, np.arange(n)
    (folder / "prepared").mkdir()
    np.save(folder / "prepared" / IMAGES_FILE, np.zeros((n, 4, 4, 3), np.uint8))
    save_prepared_labels(
        folder / "prepared", labels=labels, row_ids=row_ids, train_index=row_ids[:train],
        val_index=row_ids[train:], class_names=["a", "b", "c"], img_size=4,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    vectors = np.abs(np.abs(rng.normal(size=(3, 16)))[labels] + 0.3 * rng.normal(size=(n, 16)))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    save_catalog(folder / "catalog", vectors, vectors, row_ids, "md5", 0.5)


def test_audit_smoke_run_prints_what_fingerprints_and_the_audit_cost(tmp_path: Path):
    tiny_catalog(tmp_path, 90, train=70)

    command = [
        sys.executable,
        str(ROOT / "benchmarks" / "audit.py"),
        "--images",
        "12",
        "--copies",
        "12",
    ]
    command += ["--img-size", "32", "--rounds", "1", "--catalog-rows", "40", "--audit-rows", "400"]
    command += ["--embeddings", str(tmp_path / "catalog"), "--prepared", str(tmp_path / "prepared")]
    command += ["--index", "exact", "--index", "ivf", "--catalog-dir", str(tmp_path / "jpegs")]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    found = tables(run.stdout)
    assert {"hash", "grouping", "calibration", "audit"} <= set(found)
    _, hashing = found["hash"]
    before, after = (float(cell) for cell in hashing["ms per image"][:2])
    assert before > 0 and after > 0 and math.isfinite(float(hashing["ms per image"][2]))
    _, audited = found["audit"]
    assert list(audited) == ["exact", "ivf"]
    assert all(float(cells[0]) >= 0 for cells in audited.values())


@pytest.mark.slow
def test_audit_bar_smoke_run_finds_what_was_planted(tmp_path: Path):
    command = [sys.executable, str(ROOT / "benchmarks" / "audit_bar.py"), "--rows", "60"]
    command += ["--copies", "5", "--flips", "3", "--epochs", "1", "--work-dir", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    _, rows = tables(run.stdout)["audit bar"]
    assert rows["injected pairs in one group by prepare's hash"] == ["5 of 5"]  # a kind each
    assert rows["flipped labels among the 200 most suspect"][0].endswith("of 3")
    assert rows["injected pairs across train/validation"] == ["0"]
    assert rows["duplicate rows counted by prepare"] == ["5"]


def test_spread_smoke_run_prints_each_seed_and_their_summary(tmp_path: Path):
    command = [sys.executable, str(ROOT / "benchmarks" / "spread.py"), "--dataset", "digits"]
    command += ["--seeds", "1,2", "--max-batches", "2", "-S", "epochs=1", "-S", "img_size=16"]
    command += ["--work-dir", str(tmp_path / "work")]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    header, rows = tables(run.stdout)["spread"]
    assert header.startswith("training seed | val_accuracy | macro_f1 | precision@k | map@k")
    assert list(rows) == ["1", "2", "mean", "std", "min", "max"]
    seeds = np.array([[float(cell) for cell in rows[seed][:5]] for seed in ("1", "2")])
    assert ((seeds[:, :4] >= 0) & (seeds[:, :4] <= 1)).all(), rows
    assert (seeds[:, 4] == 1).all()  # one epoch: the best is the first
    summary = {name: [float(cell) for cell in rows[name][:5]] for name in ("mean", "std")}
    np.testing.assert_allclose(summary["mean"], seeds.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(summary["std"], seeds.std(axis=0, ddof=1), atol=1e-4)


def test_unseen_smoke_run_scores_every_vector_on_held_out_classes(tmp_path: Path):
    command = [sys.executable, str(ROOT / "benchmarks" / "unseen.py"), "--dataset", "catalog"]
    command += ["--rows", "200", "--max-batches", "2", "-S", "epochs=1", "-S", "img_size=32"]
    command += ["--data-dir", str(tmp_path / "data"), "--work-dir", str(tmp_path / "work")]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    held_out = re.search(r"held out \(holdout seed 0\): ([\w, ]+) \((\d+) images\)", run.stdout)
    names = held_out[1].split(", ")
    assert len(set(names)) == 3 and int(held_out[2]) == 60, held_out[0]  # 20 images a class
    header, rows = tables(run.stdout)["unseen"]
    assert header.startswith("vector | dims | unseen: P@k | unseen: mAP@k")
    dims = {name.split(" ")[0]: int(cells[0]) for name, cells in rows.items()}
    assert dims["embedding"] == 512 and dims["appearance"] == 256 and dims["pooled"] == 4096
    assert dims["logits"] == 7  # the seen classes only
    for name, cells in rows.items():
        values = [float(cell) for cell in cells[1:]]
        assert all(0 <= value <= 1 for value in values), (name, cells)
        # An unseen query's neighbours of its own class are unseen-class ones.
        assert values[0] + values[2] <= 1 + 1e-4, (name, cells)


def test_unseen_query_metrics_agree_with_the_recommend_stage(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    from unseen import query_metrics

    from imgrec.recommender.recommend import retrieval_metrics

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 50)
    labels[:2] = 4  # a label with a single other item to find
    neighbor_labels = rng.integers(0, 5, (50, 5))
    every = np.arange(50)
    assert query_metrics(neighbor_labels, labels, every) == retrieval_metrics(
        neighbor_labels, labels
    )
    whole_classes = np.flatnonzero(labels >= 3)  # the counts of their labels stay the same
    assert query_metrics(neighbor_labels, labels, whole_classes) == retrieval_metrics(
        neighbor_labels[whole_classes], labels[whole_classes]
    )


def test_grow_catalog_smoke_run_embeds_only_the_appended_rows(tmp_path: Path):
    """The benchmark's smoke run is also the pipeline's test of a grown catalog (issue 22's
    bar, tiny): an unchanged source reruns fetch_catalog alone; 30 appended rows rerun the
    catalog's stages and not train, embed the 30 alone, and give the bytes of a from-scratch
    pass; the query command then answers from the grown catalog."""
    command = [sys.executable, str(ROOT / "benchmarks" / "grow_catalog.py"), "--smoke",
               "--work-dir", str(tmp_path)]  # fmt: skip
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    steps = run.stdout.split("\n#### ")[1:]
    assert [step.split(":")[0] for step in steps] == [
        "1. build", "2. unchanged", "3. append", "4. from scratch (embed, audit, recommend)"
    ]  # fmt: skip

    def ran(step: str) -> list[str]:
        return [row.split(" | ")[0].strip("| ") for row in step.splitlines()[4:] if "| " in row]

    assert ran(steps[1]) == ["fetch_catalog"] and "is up to date with its source" in steps[1]
    assert ran(steps[2]) == [
        "fetch_catalog", "prepare_catalog", "embed", "audit", "catalog_map", "recommend", "figure"
    ]  # fmt: skip
    assert "embedded 30 of 330 images; reused the vectors of 300" in steps[2]
    assert "byte-identical to from scratch: yes" in run.stdout

    project = tmp_path / "project"
    appended = sorted((tmp_path / "catalog").glob("append-*.parquet"))[-1]
    (tmp_path / "new.png").write_bytes(pq.read_table(appended)["image"][-1].as_py()["bytes"])
    query = subprocess.run(
        [sys.executable, "-m", "imgrec", "recommend", str(tmp_path / "new.png"), "--json"],
        cwd=project, capture_output=True, text=True, check=True,
        env=os.environ | {"PYTHONPATH": str(project / "src")},
    )  # fmt: skip
    assert 329 in json.loads(query.stdout)[0]["duplicate_of"]  # catalog row 329 of 330


def test_conv_paths_smoke_run_prints_each_path_and_what_it_changes():
    command = [sys.executable, str(ROOT / "benchmarks" / "conv_paths.py"), "--smoke"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [
        line for line in done.stdout.splitlines() if line.startswith("| ") and "---" not in line
    ]
    assert len(rows) == 5  # the header and four paths
    assert "| portable (oneDNN AVX2) |" in rows[1] and rows[1].endswith("| 1.00 | none |")
    # ATen's own convolution computes every layer in another order than oneDNN's
    assert "layers: conv1, conv2, conv3, conv4" in rows[3]


# What a GPU machine may lack (measured on the H200 of issue 28: no dvc, dask, faiss or
# simplejpeg), and what the check must not need besides.
NOT_ON_A_GPU_MACHINE = (
    "dask", "distributed", "faiss", "simplejpeg", "dvc", "dvclive", "yaml", "matplotlib",
    "pandas", "torchvision", "fastapi", "uvicorn",
)  # fmt: skip


def run_gpu_check(tmp_path: Path, not_installed: tuple[str, ...]) -> subprocess.CompletedProcess:
    """`benchmarks/gpu_check.py --small` on the CPU, each package named made unimportable."""
    script = ROOT / "benchmarks" / "gpu_check.py"
    runner = f"""
import importlib.machinery, runpy, sys
class NotInstalled:  # found, but importing it fails as for a package that is not there
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {not_installed!r}:
            return importlib.machinery.ModuleSpec(name, self)
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {{spec.name!r}}", name=spec.name)
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, NotInstalled())
sys.argv = ["gpu_check.py", "--small", "--out", {str(tmp_path)!r}]
runpy.run_path({str(script)!r}, run_name="__main__")
"""
    return subprocess.run([sys.executable, "-c", runner], capture_output=True, text=True,
                          cwd=tmp_path, timeout=900)  # fmt: skip


def test_gpu_check_names_every_package_it_lacks_in_one_sentence(tmp_path: Path):
    run = run_gpu_check(tmp_path, ("tqdm", "sklearn"))
    assert run.returncode == 1
    assert run.stderr == "gpu_check needs scikit-learn, tqdm: pip install scikit-learn tqdm.\n"
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.slow  # about 35 s of CPU: every section, each once
def test_gpu_check_dry_run_needs_none_of_the_pipelines_other_packages(tmp_path: Path):
    """`benchmarks/gpu_check.py --small` on the CPU, each package above made unimportable: every
    section runs, every check passes, the JSON and the table are written."""
    run = run_gpu_check(tmp_path, NOT_ON_A_GPU_MACHINE)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert 0 < results["stage_paths"]["audit_copy_cosine"] <= 1  # audit's path ran too
    sections = ["environment", "data", "stage_paths", "determinism", "resume",
                "incremental_embed", "epoch_seconds", "seed_loop", "ceiling"]  # fmt: skip
    for name in sections:
        assert "error" not in results[name] and "skipped" not in results[name], results[name]
    assert "an equivalent PIL loop" in results["seed_loop"]["loop"]
    assert results["resume"]["augment_tf32_resumed_equal_uninterrupted"] is True
    assert results["incremental_embed"]["fp32_grown_equals_full_pass"] is True
    assert "| 32 |" in (tmp_path / "gpu_check.md").read_text()  # the epoch table's row


def test_adam_step_smoke_run_times_both_steps(tmp_path: Path):
    command = [sys.executable, str(ROOT / "benchmarks" / "adam_step.py"), "--smoke"]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in run.stdout.splitlines()
            if line.startswith("| ") and "ms per call" not in line}  # fmt: skip
    assert rows.keys() == {"forward + backward", "fused (model.adam)", "torch default"}
    assert all(float(ms) > 0 and math.isfinite(float(ratio)) for ms, ratio in rows.values())


def test_duplicates_scale_smoke_run_finds_the_injected_copies(tmp_path: Path):
    """On stand-in idx files (random blobs, not Fashion-MNIST): every row of its table."""
    import gzip

    rng = np.random.default_rng(0)
    photos = np.zeros((700, 28, 28), np.uint8)
    for photo in photos:  # a few bright blocks on black: distinct, and no two alike
        for _ in range(4):
            y, x = rng.integers(0, 22, 2)
            photo[y : y + 6, x : x + 6] = rng.integers(60, 256)
    for part, rows in (("train", photos[:600]), ("t10k", photos[600:])):
        with gzip.open(tmp_path / f"{part}-images-idx3-ubyte.gz", "wb") as out:
            out.write(bytes(16) + rows.tobytes())
        with gzip.open(tmp_path / f"{part}-labels-idx1-ubyte.gz", "wb") as out:
            out.write(bytes(8) + (np.arange(len(rows)) % 10).astype(np.uint8).tobytes())
    command = [sys.executable, str(ROOT / "benchmarks" / "duplicates_scale.py"), "--sizes", "600"]
    command += ["--per-kind", "5", "--old", "600", "--fashion-mnist", str(tmp_path)]
    run = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in run.stdout.splitlines() if line.startswith("| 600")]
    assert [row[1].strip() for row in rows] == ["verified", "old: transitive"]
    assert float(rows[0][2]) == 1.0  # every injected copy but the crops
