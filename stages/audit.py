"""Stage audit: duplicates the hash missed, leaks, suspect labels and outliers, from the
model's vectors; a report, its counts and two figures."""

from imgrec.data.image_hashes import load_image_hashes
from imgrec.data.prepared import UNLABELED
from imgrec.files import write_json
from imgrec.pipeline import runtime, stage
from imgrec.recommender.audit import (
    AuditConfig,
    audit,
    check_gates,
    copy_similarity_threshold,
    duplicates_figure,
    mostly_suspect,
    suspect_labels_figure,
)
from imgrec.recommender.audit_report import save_report
from imgrec.recommender.catalog import load_catalog
from imgrec.recommender.plotting import save_figure
from imgrec.serving.query import check_catalog
from imgrec.training.checkpoint import load_checkpoint
from imgrec.training.inference import embed


def main(args, config: AuditConfig) -> None:
    device = runtime.start(config)
    catalog = load_catalog(args.embeddings, args.prepared)
    check_catalog(args.model, catalog)
    model = load_checkpoint(args.model, device).model
    copy_cosine = copy_similarity_threshold(catalog, lambda x: embed(model, x, device=device))
    report, neighbors = audit(catalog, load_image_hashes(args.hashes), copy_cosine, config)
    counts = {
        "exact_duplicates": sum(g.kind == "exact" for g in report.duplicates),
        "near_duplicates": sum(g.kind == "near" for g in report.duplicates),
        "split_leaks": len(report.leaks),
        "suspect_labels": len(report.suspect_labels),
        "outliers": len(report.outliers),
    }
    print(", ".join(f"{name.replace('_', ' ')} {count}" for name, count in counts.items()))
    if warning := mostly_suspect(report, len(catalog.row_ids)):
        print(f"warning: {warning}")
    save_report(args.report, report)
    write_json(args.counts, counts)  # counts, not scores: a report
    save_figure(duplicates_figure(report, catalog), args.duplicates_png)
    save_figure(suspect_labels_figure(report, catalog, neighbors), args.suspects_png)
    # After the outputs are written: a failed gate leaves the report to look at.
    check_gates(report, int((catalog.labels != UNLABELED).sum()), config)


if __name__ == "__main__":
    paths = ["embeddings", "prepared", "hashes", "model", "report", "counts", "duplicates_png",
             "suspects_png"]  # fmt: skip
    stage.run(main, AuditConfig, paths)
