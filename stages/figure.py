"""Stage figure: query images and their top-k recommendations, with labels and scores."""

import numpy as np
import pyarrow.parquet as pq

from imgrec import stage
from imgrec.catalog import load_catalog
from imgrec.figures import neighbor_title, recommendation_figure, save_png

QUERIES = 6


def main() -> None:
    parser = stage.StageParser(description=__doc__)
    parser.add_argument("--embeddings", required=True)
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--recommendations", required=True)
    parser.add_argument("--out", required=True, help="PNG to write")
    args = parser.parse_args()

    catalog = load_catalog(args.embeddings, args.prepared)
    table = pq.read_table(args.recommendations).to_pandas()
    top_k = int(table["rank"].max())
    neighbor_rows = table["neighbor_row_id"].to_numpy().reshape(-1, top_k)  # (N, k), catalog order
    scores = table["score"].to_numpy().reshape(-1, top_k)
    # Queries: the first validation image of each of the first QUERIES classes.
    val_labels = catalog.labels[catalog.val_index]
    classes = np.unique(val_labels)[:QUERIES]
    queries = [int(catalog.val_index[np.argmax(val_labels == c)]) for c in classes]

    names = catalog.class_names
    neighbor_positions = [catalog.positions(neighbor_rows[q]) for q in queries]
    fig = recommendation_figure(
        [catalog.images[q] for q in queries],
        [f"query #{catalog.row_ids[q]}\n{names[catalog.labels[q]]}" for q in queries],
        [[catalog.images[p] for p in positions] for positions in neighbor_positions],
        [
            [
                neighbor_title(names[catalog.labels[p]], s)
                for p, s in zip(positions, scores[q], strict=True)
            ]
            for q, positions in zip(queries, neighbor_positions, strict=True)
        ],
    )
    save_png(fig, args.out)


if __name__ == "__main__":
    stage.run(main)
