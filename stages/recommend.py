"""Stage recommend: the top-k most similar items for every item, and retrieval metrics."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from imgrec import params, stage
from imgrec.catalog import load_catalog
from imgrec.neighbors import make_index, retrieval_metrics


def main() -> None:
    parser = stage.StageParser(description=__doc__)
    parser.add_argument("--embeddings", required=True)
    parser.add_argument("--prepared", required=True)
    parser.add_argument("--top-k", type=stage.param, required=True)
    parser.add_argument("--index", type=stage.param, required=True)
    parser.add_argument("--hnsw-m", type=stage.param, required=True)
    parser.add_argument("--hnsw-ef-construction", type=stage.param, required=True)
    parser.add_argument("--hnsw-ef-search", type=stage.param, required=True)
    parser.add_argument(
        "--out", required=True, help="parquet of (row_id, rank, neighbor_row_id, score)"
    )
    parser.add_argument("--metrics", required=True)
    args = parser.parse_args()
    top_k = params.positive_int("top_k", args.top_k)
    kind = params.choice("index", args.index, ("exact", "faiss"))
    hnsw = {
        "neighbors_per_node": params.positive_int("hnsw_m", args.hnsw_m),
        "ef_construction": params.positive_int("hnsw_ef_construction", args.hnsw_ef_construction),
        "ef_search": params.positive_int("hnsw_ef_search", args.hnsw_ef_search),
    }

    catalog = load_catalog(args.embeddings, args.prepared)
    index = make_index(kind, **hnsw).fit(catalog.embeddings)
    scores, neighbors = index.search_catalog(top_k)  # (N, k)
    metrics = retrieval_metrics(catalog.labels[neighbors], catalog.labels)
    print(
        f"precision@{top_k} {metrics['precision_at_k']:.4f}, mAP@{top_k} {metrics['map_at_k']:.4f}"
    )

    n = len(catalog.row_ids)
    table = pa.table(
        {
            "row_id": np.repeat(catalog.row_ids, top_k),
            "rank": np.tile(np.arange(1, top_k + 1, dtype=np.int32), n),
            "neighbor_row_id": catalog.row_ids[neighbors].ravel(),
            "score": scores.ravel(),
        }
    )
    with stage.atomic_file(args.out) as tmp:
        pq.write_table(table, tmp)
    stage.write_json(args.metrics, {"top_k": top_k, "index": kind, **metrics})


if __name__ == "__main__":
    stage.run(main)
