"""Stage catalog_map: the catalog as a 2-D map of its embeddings, for people.

openTSNE's FFT-accelerated t-SNE (Linderman et al. 2019) on each item's MAP_NEIGHBORS exact
cosine neighbours (the same exact search the audit uses), PCA initialisation, the seed
param's random state. Chosen by measurement (RESULTS.md, "The catalog map"): at
40,000 items on 2 cores it keeps more of each item's true neighbours on the map than UMAP
and scikit-learn's t-SNE, with trustworthiness alike, and it runs on both cores where UMAP,
seeded, runs on one; PCA, the linear baseline, mixes the classes.

Outputs: the coordinates (`map_coordinates`, scaled into [0, 1]) and a figure coloured by
label with the audit's findings marked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from imgrec.config import StageConfig, param
from imgrec.data.prepared import UNLABELED
from imgrec.recommender.audit_report import AuditReport
from imgrec.recommender.map_coordinates import MapCoordinates, normalized
from imgrec.recommender.neighbors import ExactIndex

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

    from imgrec.recommender.catalog import Catalog

log = logging.getLogger(__name__)

PERPLEXITY = 30  # openTSNE's default: the neighbourhood size each item's affinities cover
MAP_NEIGHBORS = 3 * PERPLEXITY  # the neighbours perplexity-based affinities read


@dataclass(frozen=True)
class CatalogMapConfig(StageConfig):
    seed: int = param(42, ge=0)
    num_threads: int = param(2, ge=1)
    # the exact neighbour search and openTSNE's numpy run on the pipeline's BLAS kernels
    kernels: Literal["portable", "native"] = "portable"


def project(embeddings: np.ndarray, seed: int, threads: int) -> np.ndarray:
    """(N, 2) map coordinates of (N, D) unit embeddings; the same for the same seed."""
    n = len(embeddings)
    if n < 3:  # t-SNE needs neighbours; one or two items lie side by side
        return np.column_stack([np.arange(n, dtype=np.float64), np.zeros(n)])
    from openTSNE import TSNE, affinity, nearest_neighbors  # slow import; only needed here

    logging.getLogger("openTSNE").setLevel(logging.WARNING)  # a line per choice it makes

    k = min(MAP_NEIGHBORS, n - 1)
    scores, indices = ExactIndex().fit(embeddings).search_catalog(k)  # (N, k), self excluded
    knn = nearest_neighbors.PrecomputedNeighbors(indices, np.maximum(1 - scores, 0))
    affinities = affinity.PerplexityBasedNN(
        perplexity=min(PERPLEXITY, (k - 1) / 3), knn_index=knn, n_jobs=threads
    )
    tsne = TSNE(n_jobs=threads, random_state=seed)
    return np.asarray(tsne.fit(affinities=affinities, initialization="pca", X=embeddings))


def catalog_map(catalog: Catalog, config: CatalogMapConfig) -> MapCoordinates:
    embeddings = np.asarray(catalog.embeddings, dtype=np.float32)
    xy = normalized(project(embeddings, config.seed, config.num_threads))
    log.info("mapped %d catalog items", len(xy))
    return MapCoordinates(np.asarray(catalog.row_ids), xy)


# How each of the audit's findings is marked on the map: (marker, colour, size).
FLAG_MARKERS = {
    "duplicate": ("o", "black", 30),
    "leak": ("D", "darkorange", 40),
    "suspect": ("^", "red", 40),
    "outlier": ("X", "magenta", 40),
}
MARKED = {"duplicate": "duplicate", "leak": "leak", "suspect": "suspect_label",
          "outlier": "outlier"}  # the legend's name -> the audit's Flag  # fmt: skip


def flag_rows(report: AuditReport) -> dict[str, np.ndarray]:
    """The row ids the audit flags, by kind of finding, sorted: in FLAG_MARKERS' order."""
    found = report.flagged_rows()
    return {
        kind: np.unique(np.asarray(found[MARKED[kind]], dtype=np.int64)) for kind in FLAG_MARKERS
    }


def _label_colors(n_classes: int) -> np.ndarray:
    import matplotlib

    if n_classes <= 10:
        return matplotlib.colormaps["tab10"](np.arange(n_classes))
    if n_classes <= 20:
        return matplotlib.colormaps["tab20"](np.arange(n_classes))
    return matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, n_classes))


def map_figure(
    coordinates: MapCoordinates, labels: np.ndarray, class_names: list[str], report: AuditReport
) -> plt.Figure:
    """Every item a point coloured by its label (grey: unlabeled); the audit's findings
    drawn over them with hollow markers, so the label beneath still shows."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 10), layout="constrained")
    xy, n = coordinates.xy, len(coordinates.xy)
    size = float(np.clip(4000 / max(n, 1), 1, 30))  # 40,000 points: 1 pt^2 each
    colors = np.zeros((n, 4))
    colors[:] = (0.6, 0.6, 0.6, 1.0)
    palette = _label_colors(len(class_names))
    known = labels != UNLABELED
    colors[known] = palette[labels[known]]
    ax.scatter(xy[:, 0], xy[:, 1], s=size, c=colors, linewidths=0, rasterized=True)
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=palette[c], label=name)
        for c, name in enumerate(class_names)
    ][:20]  # a legend of hundreds of classes says nothing
    for kind, rows in flag_rows(report).items():
        marker, color, area = FLAG_MARKERS[kind]
        positions = coordinates.positions(rows).clip(max=max(n - 1, 0))
        positions = positions[coordinates.row_ids[positions] == rows]  # those on the map
        ax.scatter(xy[positions, 0], xy[positions, 1], s=area, marker=marker,
                   facecolors="none", edgecolors=color, linewidths=0.8)  # fmt: skip
        handles.append(plt.Line2D([], [], marker=marker, ls="", markerfacecolor="none",
                                  color=color, label=f"{kind} ({len(positions)})"))  # fmt: skip
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8,
              frameon=False)  # fmt: skip
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(
        f"The catalog's {n} items by their embeddings (t-SNE), coloured by label;\n"
        "hollow markers: what the audit flags"
    )
    return fig
