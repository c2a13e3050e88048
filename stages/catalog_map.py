"""Stage catalog_map: the catalog's embeddings projected to 2-D (t-SNE, the seed param's),
as coordinates for the page and a figure coloured by label with the audit's findings."""

from imgrec.pipeline import stage
from imgrec.recommender.audit_report import load_report
from imgrec.recommender.catalog import load_catalog
from imgrec.recommender.catalog_map import CatalogMapConfig, catalog_map, map_figure
from imgrec.recommender.map_coordinates import save_coordinates
from imgrec.recommender.plotting import save_figure


def main(args, config: CatalogMapConfig) -> None:
    catalog = load_catalog(args.embeddings, args.prepared)
    coordinates = catalog_map(catalog, config)
    save_coordinates(args.out, coordinates)
    report = load_report(args.audit)
    save_figure(map_figure(coordinates, catalog.labels, catalog.class_names, report), args.png)


if __name__ == "__main__":
    stage.run(main, CatalogMapConfig, ["embeddings", "prepared", "audit", "out", "png"])
