"""Stage figure: each class's first validation image beside its top-k recommendations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from imgrec.config import StageConfig
from imgrec.plotting import neighbor_title, recommendation_figure
from imgrec.prepared import Prepared

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

    from imgrec.recommendations import Recommendations


@dataclass(frozen=True)
class FigureConfig(StageConfig):
    pass


def catalog_recommendations_figure(
    data: Prepared, recommendations: Recommendations, max_queries: int = 12
) -> plt.Figure:
    """One query per class (up to `max_queries`): each class's first validation image."""
    val_labels = data.labels[data.val_index]
    classes = np.unique(val_labels)[:max_queries]
    positions = [int(data.val_index[np.argmax(val_labels == c)]) for c in classes]
    names = data.class_names
    neighbor_positions, neighbor_titles = [], []
    for position in positions:
        neighbor_rows, scores = recommendations.of(int(data.row_ids[position]))
        found = data.positions(neighbor_rows)
        neighbor_positions.append(found)
        neighbor_titles.append(
            [
                neighbor_title(names[data.labels[p]], s, int(data.row_ids[p]))
                for p, s in zip(found, scores, strict=True)
            ]
        )
    shown = f"{len(classes)} of {len(np.unique(data.labels))} classes"
    return recommendation_figure(
        [data.images[p] for p in positions],
        [f"query #{data.row_ids[p]}\n{names[data.labels[p]]}" for p in positions],
        [[data.images[p] for p in found] for found in neighbor_positions],
        neighbor_titles,
        title=f"Left, bold: each class's first validation image (row id, label; {shown}).\n"
        f"Right: its {recommendations.neighbor_row_ids.shape[1]} most similar catalog items "
        "(row id, label, cosine score), best first.",
    )
