"""Stage recommend: the top-k most similar items for every item, and retrieval metrics."""

from imgrec import stage
from imgrec.catalog import load_catalog
from imgrec.files import write_json
from imgrec.neighbors import make_index
from imgrec.recommend import RecommendConfig, retrieval_metrics
from imgrec.recommendations import Recommendations, save_recommendations


def main(args, config: RecommendConfig) -> None:
    catalog = load_catalog(args.embeddings, args.prepared)
    index = make_index(config).fit(catalog.embeddings)
    scores, neighbors = index.search_catalog(config.top_k)  # (N, k) positions
    metrics = retrieval_metrics(catalog.labels[neighbors], catalog.labels)
    k = config.top_k
    print(f"precision@{k} {metrics['precision@k']:.4f}, mAP@{k} {metrics['map@k']:.4f}")
    save_recommendations(
        args.out, Recommendations(catalog.row_ids, catalog.row_ids[neighbors], scores)
    )
    write_json(args.metrics, metrics)


if __name__ == "__main__":
    stage.run(main, RecommendConfig, ["embeddings", "prepared", "out", "metrics"])
