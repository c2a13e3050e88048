"""The seed's loading step, apart from `baseline.py` so measuring it does not count torch.

Importing torch and torchvision costs ~0.9 GB of RSS before any data is read;
imgrec's fetch imports neither, so neither does the baseline's.
"""

import warnings

import dask.dataframe as dd
import pandas as pd


def load_frame(source: str, rows: int) -> pd.DataFrame:
    """The seed's loading step, with every partition allowed to contribute rows."""
    return dd.read_parquet(source).head(rows, npartitions=-1)


def literal_head_rows(source: str, rows: int) -> int:
    """How many rows the seed's literal `head(rows)` returns (Dask reads one partition)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Dask warns that it found too few rows
        return len(dd.read_parquet(source).head(rows))
