"""Stage fetch_catalog: the catalog's rows (`catalog_source`, `catalog_rows`), read by fetch's
code as the training data is; or, with `catalog_source` empty, a file that says the training
data is the catalog (`raw_parquet.save_training_data_marker`).

DVC tracks a param, not the files it names, so the stage always runs (dvc.yaml:
`always_changed`) and reads its source again only when it changed: each file's fsspec
`ukey` (`source_state`) is remembered in the state file beside the output's md5, which DVC
keeps (`persist`); the same source, code and output, and nothing is read. To read it
again regardless, delete that state file (`.imgrec/fetch_catalog.json`).
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from imgrec.config import StageConfig, param
from imgrec.data.fetch import BUILTIN_PREFIX, fetch, list_parquet_files
from imgrec.data.raw_parquet import save_training_data_marker
from imgrec.errors import ImgrecError, first_line
from imgrec.files import atomic_file
from imgrec.pipeline.dask_cluster import LOCAL


@dataclass(frozen=True)
class FetchCatalogConfig(StageConfig):
    # Empty: the training data is the catalog (prepare_catalog takes its prepared images).
    catalog_source: str = ""
    catalog_rows: int = param(40000, ge=1)
    dask_scheduler: str = LOCAL  # where row groups are read; the output is the same anywhere


# What writes the fetched file: an edit to any of them, or another pyarrow, fetches again.
FETCH_CODE = ("fetch.py", "source_schema.py", "fetch_catalog.py", "raw_parquet.py")


def source_state(source: str, rows: int) -> dict:
    """What decides the rows `fetch(source, rows)` writes, cheaply: the source, `rows`, the
    code and pyarrow that write them, and each parquet file's fsspec `ukey` (local: size and
    modification time; Hugging Face: the file's git blob). An appended row changes a file
    or adds one, and so this."""
    package = Path(__file__).parent
    code = hashlib.md5(b"".join((package / name).read_bytes() for name in FETCH_CODE))
    state = {"source": source, "rows": rows, "code_md5": code.hexdigest(),
             "pyarrow": pa.__version__, "files": []}  # fmt: skip
    if source.startswith(BUILTIN_PREFIX):
        return state
    fs, paths = list_parquet_files(source)
    try:
        return state | {"files": [[p, fs.ukey(p)] for p in paths]}
    except Exception as error:  # network and auth errors come in many types
        raise ImgrecError(f"cannot reach source {source!r}: {first_line(error)}") from error


def _file_md5(path: str | Path) -> str | None:
    # Its content, not its inode or mtime: DVC moves a stage's output into its cache and
    # puts a copy back.
    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "md5").hexdigest()
    except FileNotFoundError:
        return None


def fetched_already(state_path: str | Path, source: dict, out_path: str | Path) -> dict | None:
    """The report of the fetch that wrote `out_path` from this `source_state`, if that file
    is still the one it wrote; None when fetch must run."""
    try:
        saved = json.loads(Path(state_path).read_text())
    except (OSError, ValueError):
        return None
    if saved.get("source") != source or saved.get("out_md5") != _file_md5(out_path):
        return None
    return saved.get("report")


def remember_fetch(
    state_path: str | Path, source: dict, out_path: str | Path, report: dict
) -> None:
    """Note what `out_path` was fetched from, for `fetched_already` next time."""
    state = {"source": source, "out_md5": _file_md5(out_path), "report": report}
    with atomic_file(state_path) as tmp:
        tmp.write_text(json.dumps(state, indent=1))


def fetch_catalog(
    config: FetchCatalogConfig, out_path: Path, state_path: Path
) -> tuple[dict, bool]:
    """Write the catalog's rows to `out_path` unless it holds them already; its report, and
    whether the source was read."""
    if not config.catalog_source:
        with atomic_file(out_path) as tmp:
            save_training_data_marker(tmp)
        return {"catalog": "the training data"}, False
    source = source_state(config.catalog_source, config.catalog_rows)
    report = fetched_already(state_path, source, out_path)
    if report is not None:
        return report, False
    with atomic_file(out_path) as tmp:
        result = fetch(config.catalog_source, config.catalog_rows, tmp,
                       dask_scheduler=config.dask_scheduler, labels_required=False)  # fmt: skip
    report = {"rows_fetched": result.rows_fetched, "files_read": result.files_read}
    remember_fetch(state_path, source, out_path, report)
    return report, True
