"""Stage figure: query images and their top-k recommendations, with labels and scores."""

from imgrec.data.prepared import load_prepared
from imgrec.pipeline import stage
from imgrec.recommender.figure import FigureConfig, catalog_recommendations_figure
from imgrec.recommender.plotting import save_figure
from imgrec.recommender.recommendations import load_recommendations


def main(args, config: FigureConfig) -> None:
    data = load_prepared(args.prepared)
    recommendations = load_recommendations(args.recommendations)
    save_figure(catalog_recommendations_figure(data, recommendations), args.out)


if __name__ == "__main__":
    stage.run(main, FigureConfig, ["prepared", "recommendations", "out"])
