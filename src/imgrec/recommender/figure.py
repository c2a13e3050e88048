"""Stage figure: each class's first validation image beside its top-k recommendations."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from imgrec.config import StageConfig
from imgrec.data.prepared import Prepared
from imgrec.recommender.plotting import neighbor_title, recommendation_figure

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

    from imgrec.recommender.recommendations import Recommendations


@dataclass(frozen=True)
class FigureConfig(StageConfig):
    pass


def catalog_recommendations_figure(
    data: Prepared, recommendations: Recommendations, max_queries: int = 12
) -> plt.Figure:
    """One query per class (up to `max_queries`): each class's first validation image, or
    for a catalog apart from the training data (no split) its first item; unlabeled items
    are one more "class"."""
    candidates = data.val_index if len(data.val_index) else np.arange(len(data.labels))
    candidate_labels = data.labels[candidates]
    classes = np.unique(candidate_labels)  # UNLABELED (-1) first: moved to the end
    classes = np.concatenate([classes[classes >= 0], classes[classes < 0]])[:max_queries]
    positions = [int(candidates[np.argmax(candidate_labels == c)]) for c in classes]
    names = [*data.class_names, "unlabeled"]  # UNLABELED (-1) is the last
    queries = "validation image" if len(data.val_index) else "catalog item"
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
        title=f"Left, bold: each class's first {queries} (row id, label; {shown}).\n"
        f"Right: its {recommendations.neighbor_row_ids.shape[1]} most similar catalog items "
        "(row id, label, cosine score), best first.",
    )
