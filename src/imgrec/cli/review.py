"""`imgrec review`: decide what the audit found, without the page.

    imgrec review suggestions [--all] [--json]   suspect labels and their suggested labels
    imgrec review duplicates [--all] [--json]    duplicate groups
    imgrec review accept ROW... | accept-all     take the audit's suggested label
    imgrec review relabel ROW LABEL              give another label
    imgrec review drop ROW... | keep ROW...      leave the data / reviewed, keep as it is
    imgrec review keep-one ROW [--keep ROW]      of ROW's duplicate group keep one, drop the rest
    imgrec review forget ROW...                  undo a decision

Decisions go to the corrections file (labels/corrections.csv; format: `imgrec.data.corrections`)
through `corrections.update`, as the server's review endpoint writes them; the next
`dvc repro` applies them in prepare and retrains.
"""

from __future__ import annotations

import argparse
import json

from imgrec.cli.common import format_table
from imgrec.data import corrections
from imgrec.serving.query import DEFAULT_AUDIT, DEFAULT_CORRECTIONS, DEFAULT_PREPARED


def _rows(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"a row id is an integer >= 0, got {text!r}")
    return value


def add_parser(commands, parents: dict[str, argparse.ArgumentParser]) -> None:
    files = argparse.ArgumentParser(add_help=False)
    files.add_argument("--audit", metavar="FILE", help=f"the audit's report ({DEFAULT_AUDIT})")
    files.add_argument(
        "--prepared", metavar="DIR", help=f"the catalog's prepared data ({DEFAULT_PREPARED})"
    )
    files.add_argument(
        "--corrections", metavar="FILE", help=f"the corrections file ({DEFAULT_CORRECTIONS})"
    )
    review = commands.add_parser(
        "review",
        help="decide what the audit found: relabel, drop, keep (labels/corrections.csv)",
        description=__doc__.split("\n\n")[0],
    )
    actions = review.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str, run, *rows: str) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help, description=help, parents=[files])
        for row in rows:
            nargs = "+" if row.endswith("...") else None
            parser.add_argument(row.rstrip("."), type=_rows, nargs=nargs, metavar="ROW")
        parser.set_defaults(run=run, images=[])
        return parser

    for name, what in (("suggestions", "suspect labels"), ("duplicates", "duplicate groups")):
        listing = action(name, f"list the audit's {what} and their decisions", _list)
        listing.add_argument("--all", action="store_true", help="decided ones too")
        listing.add_argument("--json", action="store_true", help="one JSON object per finding")
    action("accept", "relabel rows to the audit's suggested label", _decide, "rows...")
    action("accept-all", "accept every suggestion not decided yet", _decide)
    relabel = action("relabel", "give a row another label", _decide, "row")
    relabel.add_argument("label", help="a class name")
    action("drop", "drop rows from the data", _decide, "rows...")
    action("keep", "record rows as reviewed and kept as they are", _decide, "rows...")
    keep_one = action("keep-one", "of a row's duplicate group keep one, drop the rest",
                      _decide, "row")  # fmt: skip
    keep_one.add_argument("--keep", type=_rows, metavar="ROW", help="default: the group's first")
    action("forget", "undo the decisions about rows", _decide, "rows...")


def _paths(args: argparse.Namespace) -> tuple:
    """The files, each given or defaulted (against the repository root) by resolve_defaults."""
    return args.audit, args.prepared, args.corrections


def _describe(correction: corrections.Correction | None) -> str:
    if correction is None:
        return "-"
    if correction.decision == "relabel":
        return f"relabel -> {correction.new_label}"
    return correction.decision


def _list(args: argparse.Namespace) -> int:
    from imgrec.recommender.audit_report import load_report

    report_path, _, corrections_path = _paths(args)
    report = load_report(report_path)
    decided = {c.row_id: c for c in corrections.load(corrections_path)}
    if args.action == "suggestions":
        header = ("row_id", "label", "suggested", "score", "decision")
        found = [
            {"row_id": s.row_id, "label": s.label, "suggested": s.suggested, "score": s.score,
             "decision": _describe(decided.get(s.row_id))}
            for s in report.suspect_labels
            if args.all or s.row_id not in decided
        ]  # fmt: skip
        total = len(report.suspect_labels)
    else:
        header = ("row_ids", "kind", "similarity", "decisions")
        found = [
            {"row_ids": list(g.row_ids), "kind": g.kind, "similarity": g.similarity,
             "decisions": [_describe(decided.get(r)) for r in g.row_ids]}
            for g in report.duplicates
            if args.all or not all(r in decided for r in g.row_ids)
        ]  # fmt: skip
        total = len(report.duplicates)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    rows = [
        [" ".join(map(str, v)) if isinstance(v, list) else f"{v:.3f}" if isinstance(v, float)
         else str(v) for v in item.values()]
        for item in found
    ]  # fmt: skip
    print(f"{len(found)} of {total} {args.action}" + ("" if args.all else " undecided"))
    if rows:
        print(format_table(header, rows, align="l" * len(header)))
    return 0


def _decide(args: argparse.Namespace) -> int:
    from imgrec.recommender.review import Review

    report_path, prepared_dir, corrections_path = _paths(args)
    review = Review.load(report_path, prepared_dir)
    forget: list[int] = []
    if args.action == "accept":
        decisions = [review.accept(row) for row in args.rows]
    elif args.action == "accept-all":
        decided = {c.row_id for c in corrections.load(corrections_path)}
        decisions = review.accept_all(decided)
    elif args.action == "relabel":
        decisions = [review.relabel(args.row, args.label)]
    elif args.action == "drop":
        decisions = [review.drop(row) for row in args.rows]
    elif args.action == "keep":
        decisions = [review.keep(row) for row in args.rows]
    elif args.action == "keep-one":
        decisions = review.keep_one(args.row, args.keep)
    else:  # forget
        decisions, forget = [], args.rows
    merged = corrections.update(corrections_path, decisions, forget)
    changes = sum(c.decision in corrections.CHANGES for c in merged)
    print(
        f"{corrections_path}: {len(decisions)} decision(s) recorded"
        + (f", {len(forget)} forgotten" if forget else "")
        + f"; {len(merged)} in all, {changes} to apply: `dvc repro` retrains on them."
    )
    return 0
