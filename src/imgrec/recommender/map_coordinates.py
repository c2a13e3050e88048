"""The catalog map's coordinates (reports/catalog_map.csv): where each catalog item lies on
the 2-D map of its embeddings (`catalog_map`).

    row_id,x,y
    0,0.4127,0.0833
    1,0.9015,0.5230

One line per catalog item, sorted by row_id (the catalog's row ids), LF line endings. x and
y lie in [0, 1], scaled together (the map's aspect is kept: the longer side spans 0..1, the
other is centred) and rounded to DECIMALS places, a tenth of a pixel on a 1,000-pixel map:
small in git and the same text for the same map. Written by `save_coordinates`, read by
`load_coordinates`.
"""

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgrec.errors import ImgrecError, MissingOutput
from imgrec.files import atomic_file

HEADER = ("row_id", "x", "y")
DECIMALS = 4


@dataclass(frozen=True)
class MapCoordinates:
    row_ids: np.ndarray  # (N,) int64, ascending
    xy: np.ndarray  # (N, 2) float64 in [0, 1]

    def positions(self, row_ids: np.ndarray) -> np.ndarray:
        """Positions in the arrays above of the given row ids (row_ids is sorted)."""
        return np.searchsorted(self.row_ids, row_ids)


def normalized(points: np.ndarray) -> np.ndarray:
    """(N, 2) points scaled into [0, 1] together, centred, rounded to DECIMALS places."""
    points = np.asarray(points, dtype=np.float64)
    if not len(points):
        return points.reshape(0, 2)
    low, high = points.min(axis=0), points.max(axis=0)
    span = float((high - low).max()) or 1.0  # one point, or all in one place: the centre
    offset = (1 - (high - low) / span) / 2  # centres the shorter side
    return np.round((points - low) / span + offset, DECIMALS)


def save_coordinates(path: str | os.PathLike, coordinates: MapCoordinates) -> None:
    order = np.argsort(coordinates.row_ids, kind="stable")
    buffer = io.StringIO()
    buffer.write(",".join(HEADER) + "\n")
    for row_id, (x, y) in zip(coordinates.row_ids[order], coordinates.xy[order], strict=True):
        buffer.write(f"{row_id},{x:.{DECIMALS}f},{y:.{DECIMALS}f}\n")
    with atomic_file(path) as tmp:
        tmp.write_bytes(buffer.getvalue().encode())


def load_coordinates(path: str | os.PathLike) -> MapCoordinates:
    path = Path(path)
    if not path.exists():
        raise MissingOutput(f"no catalog map at {path}; run `dvc repro` to make it.")
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(), newline="")))
        if not rows or tuple(rows[0]) != HEADER:
            raise ValueError(f"the first line is not {','.join(HEADER)}")
        body = [row for row in rows[1:] if row]
        row_ids = np.array([int(row[0]) for row in body], dtype=np.int64)
        xy = np.array([(float(row[1]), float(row[2])) for row in body], dtype=np.float64)
    except (OSError, ValueError, IndexError) as error:
        raise ImgrecError(
            f"the catalog map {path} is unreadable ({error}); run `dvc repro` to remake it."
        ) from error
    return MapCoordinates(row_ids, xy.reshape(len(body), 2))
