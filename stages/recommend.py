"""Stage recommend: the top-k most similar items for every item, duplicates collapsed, and
retrieval metrics."""

import imgrec  # noqa: F401, I001 - first: it sets the portable kernels before numpy loads

import numpy as np

from imgrec.data.duplicates import collapsed_search
from imgrec.files import write_json
from imgrec.pipeline import stage
from imgrec.recommender.audit_report import load_report
from imgrec.recommender.catalog import load_catalog
from imgrec.recommender.neighbors import make_index
from imgrec.recommender.recommend import RecommendConfig, retrieval_metrics
from imgrec.recommender.recommendations import Recommendations, save_recommendations


def main(args, config: RecommendConfig) -> None:
    catalog = load_catalog(args.embeddings, args.prepared)
    index = make_index(config).fit(catalog.embeddings)
    n = len(catalog.row_ids)
    if config.collapse_duplicates:
        groups = load_report(args.audit).duplicate_groups(catalog.row_ids)
    else:
        groups = np.arange(n)
    k = config.top_k
    scores, neighbors = collapsed_search(index.search_catalog, n - 1, k, groups, groups[:, None])
    metrics = retrieval_metrics(catalog.labels[neighbors], catalog.labels)
    if metrics["precision@k"] is None:
        print("no catalog item has a label: no retrieval metrics")
    else:
        print(f"precision@{k} {metrics['precision@k']:.4f}, mAP@{k} {metrics['map@k']:.4f}")
    save_recommendations(
        args.out, Recommendations(catalog.row_ids, catalog.row_ids[neighbors], scores)
    )
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    stage.run(main, RecommendConfig, ["embeddings", "prepared", "audit", "out", "metrics"])
