"""Stage audit: what the model's vectors say about the catalog. Duplicates the hash missed,
train/validation pairs still alike, suspect labels and outliers, each cut at a threshold
calibrated on the data (README, "Know your catalog").

- Near-duplicate: two items, each the other's nearest, whose embeddings are at least as
  alike as an item and its own copy. The cut is the COPY_QUANTILE of the cosine between
  up to COPY_SAMPLE catalog images and a copy of each made here (half the resolution and
  back, then JPEG quality 50), embedded by the same model, and never below what distinct
  items reach (`copy_similarity_threshold`). The hash's groups (prepare) join the ones
  found here, without chains: an item joins a hash group only as a copy of its first item,
  and groups never merge (`embedding_groups`).
- Leak: a duplicate group with members on both sides of the split; prepare keeps hash
  groups on one side, so what is left is what only the model sees.
- Suspect label: an item whose `audit_neighbors` nearest items, weighted by cosine, mostly
  (score > SUSPECT_SCORE) carry another label; the suggestion is the label with most weight.
- Outlier: an item no other catalog item resembles as closely as the "no close match"
  threshold asks of a query (`catalog`, calibration): it would be flagged as a query.
"""

import io
import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image

from imgrec.config import ComputeConfig, param
from imgrec.data import duplicates
from imgrec.data.image_hashes import ImageHashes
from imgrec.data.prepared import UNLABELED, label_name
from imgrec.errors import ImgrecError
from imgrec.recommender.audit_report import AuditReport, DuplicateGroup, Leak, Outlier, SuspectLabel
from imgrec.recommender.catalog import Catalog
from imgrec.recommender.neighbors import ExactIndex, IndexConfig, make_index

log = logging.getLogger(__name__)

COPY_SAMPLE = 500
COPY_QUANTILE = 0.01
DISTINCT_QUANTILE = 0.999
COPY_JPEG_QUALITY = 50
SUSPECT_SCORE = 0.5


GATE_OFF = -1  # an audit gate's value when it is off (`-S max_split_leaks=-1`)


@dataclass(frozen=True)
class AuditConfig(ComputeConfig, IndexConfig):
    audit_neighbors: int = param(10, ge=1)  # how many nearest items judge a label
    # Gates, so CI can refuse a dataset that got worse: the stage fails when the catalog has
    # more leaks, or a larger share of suspect labels among its labelled items, than this.
    # GATE_OFF (-1) turns a gate off: a number, so `dvc exp run -S` sets it as typed.
    max_split_leaks: int = param(GATE_OFF, ge=GATE_OFF)
    max_suspect_fraction: float = param(GATE_OFF, ge=GATE_OFF, le=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_suspect_fraction < 0 and self.max_suspect_fraction != GATE_OFF:
            raise ImgrecError(
                f"param max_suspect_fraction must be between 0 and 1, or {GATE_OFF} (off); "
                f"got {self.max_suspect_fraction!r}."
            )


def check_gates(report: AuditReport, labelled_items: int, config: AuditConfig) -> None:
    """Stop with one sentence when the catalog fails an audit gate (each off by default)."""
    leaks = len(report.leaks)
    if config.max_split_leaks != GATE_OFF and leaks > config.max_split_leaks:
        raise ImgrecError(
            f"audit gate: {leaks} split leaks, more than max_split_leaks="
            f"{config.max_split_leaks} (the audit report lists them)."
        )
    suspects = len(report.suspect_labels)
    fraction = suspects / labelled_items if labelled_items else 0.0
    if config.max_suspect_fraction != GATE_OFF and fraction > config.max_suspect_fraction:
        raise ImgrecError(
            f"audit gate: {suspects} suspect labels in {labelled_items} labelled items "
            f"({fraction:.4f}), more than max_suspect_fraction={config.max_suspect_fraction}."
        )


def degraded_copy(pixels: np.ndarray) -> np.ndarray:
    """A copy of a (S, S, 3) image as a re-upload makes one: half the resolution and back,
    then a JPEG at COPY_JPEG_QUALITY."""
    size = pixels.shape[0]
    image = Image.fromarray(pixels).resize((max(1, size // 2),) * 2, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.resize((size, size), Image.Resampling.BILINEAR).save(
        buffer, format="JPEG", quality=COPY_JPEG_QUALITY
    )
    return np.asarray(Image.open(buffer).convert("RGB"))


def copy_similarity_threshold(catalog: Catalog, embed_images, seed: int = 0) -> float:
    """The near-duplicate cut: the COPY_QUANTILE of the embedding cosine between sampled
    catalog items and their `degraded_copy` (`embed_images(images)` -> unit embeddings),
    raised where needed to the DISTINCT_QUANTILE of each validation item's cosine to its
    nearest training item, so that it stays above what distinct items reach (a model that
    packs its classes tighter than a copy moves, as an undertrained one does, would
    otherwise call neighbours copies)."""
    n = len(catalog.row_ids)
    sample = np.sort(np.random.default_rng(seed).choice(n, min(COPY_SAMPLE, n), replace=False))
    copies = np.stack([degraded_copy(np.asarray(catalog.images[i])) for i in sample])
    cosines = (np.asarray(catalog.embeddings[sample]) * embed_images(copies)).sum(axis=1)
    cut = float(np.quantile(cosines, COPY_QUANTILE))
    train_index = np.setdiff1d(np.arange(n), catalog.val_index)
    if len(catalog.val_index) and len(train_index):
        embeddings = np.asarray(catalog.embeddings)
        nearest, _ = (
            ExactIndex().fit(embeddings[train_index]).search(embeddings[catalog.val_index], 1)
        )
        cut = max(cut, float(np.quantile(nearest[:, 0], DISTINCT_QUANTILE)))
    return cut


def embedding_groups(
    embeddings: np.ndarray,
    hash_groups: np.ndarray,
    nearest: np.ndarray,
    nearest_cosine: np.ndarray,
    copy_cosine: float,
) -> np.ndarray:
    """(N,) each item's duplicate group (a position): prepare's hash groups (`hash_groups`,
    (N,) positions), each grown by the items the model calls copies of its first item.

    A pair of items each the other's nearest (`nearest`, (N,)) and as alike as a copy
    (`nearest_cosine` >= `copy_cosine`) joins an item that is in no group yet to the
    other's group only if it is as alike as a copy to that group's first item too; two
    groups never merge. So no group chains, as prepare's do not: every member is a copy of
    its hash group's first item, by the hash or by the model, whatever the catalog's size
    (a group is named by its smallest position, which may be the item that joined). Mutual
    nearest pairs are disjoint, so where a model packs a whole class tighter than a copy
    (an undertrained one does) a group gains at most one item per member."""
    n = len(hash_groups)
    groups = hash_groups.astype(np.int64).copy()
    sizes = np.bincount(groups, minlength=n)
    mutual = (nearest[nearest] == np.arange(n)) & (nearest_cosine >= copy_cosine)
    for a in np.flatnonzero(mutual):
        b = nearest[a]
        if a > b or groups[a] == groups[b]:
            continue  # each pair once, from its first item
        for item, other in ((b, a), (a, b)):  # the free one joins the other's group
            if sizes[groups[item]] > 1 or item != groups[item]:
                continue
            first = groups[other]
            if float(embeddings[item] @ embeddings[first]) >= copy_cosine:
                sizes[groups[item]] -= 1
                groups[item] = first
                sizes[first] += 1
                break
    # Named by the first position of each group, as prepare's are.
    smallest = np.full(n, n, np.int64)
    np.minimum.at(smallest, groups, np.arange(n))
    return smallest[groups]


def suspect_labels(
    labels: np.ndarray, neighbor_labels: np.ndarray, neighbor_scores: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) score (the cosine-weighted share of neighbours with another label) and (N,)
    suggested label (the one with most weight among the others). Unlabeled neighbours do not
    vote; an unlabeled item, or one with no labelled neighbour, scores 0."""
    known = neighbor_labels != UNLABELED  # (N, k)
    weights = np.where(known, np.maximum(neighbor_scores, 0), 0).astype(np.float64)
    votes = np.zeros((len(labels), max(n_classes, 1)))  # a catalog may have no label at all
    np.add.at(votes, (np.arange(len(labels))[:, None], np.where(known, neighbor_labels, 0)),
              weights)  # fmt: skip
    total = np.maximum(votes.sum(axis=1), np.finfo(np.float64).tiny)
    own = np.maximum(labels, 0)
    score = 1 - votes[np.arange(len(labels)), own] / total
    score[(labels == UNLABELED) | ~known.any(axis=1)] = 0
    votes[np.arange(len(labels)), own] = -1  # the suggestion is another label
    return score, votes.argmax(axis=1)


def audit(
    catalog: Catalog, hashes: ImageHashes, copy_cosine: float, config: AuditConfig
) -> tuple[AuditReport, np.ndarray]:
    """The catalog's audit, and each item's nearest positions (N, k) it judged labels by;
    `copy_cosine`: the near-duplicate cut (`copy_similarity_threshold`)."""
    if not np.array_equal(hashes.row_ids, catalog.row_ids):
        raise ImgrecError(
            "the image hashes and the catalog hold different images; run `dvc repro` to "
            "bring them in step."
        )
    n, k = len(catalog.row_ids), min(config.audit_neighbors, len(catalog.row_ids) - 1)
    embeddings = np.asarray(catalog.embeddings)
    scores, neighbors = make_index(config).fit(embeddings).search_catalog(k)  # (N, k)

    groups = embedding_groups(
        embeddings, np.searchsorted(catalog.row_ids, hashes.duplicate_groups),
        neighbors[:, 0], scores[:, 0], copy_cosine,
    )  # fmt: skip
    grouped, largest = duplicates.group_sizes(groups)
    log.info("audit: %d duplicate groups (%d items), the largest %d",
             len(np.unique(groups)) - (n - grouped), grouped, largest)  # fmt: skip
    found, leaks = [], []
    in_val = np.isin(np.arange(n), catalog.val_index)
    for group in duplicates.members(groups):
        cosines = embeddings[group] @ embeddings[group].T  # (m, m)
        exact = len({hashes.fingerprints[m].pixel_hash for m in group}) == 1
        similarity = 1.0 if exact else round(float(cosines.min()), 6)
        found.append(DuplicateGroup(tuple(catalog.row_ids[group].tolist()),
                                    "exact" if exact else "near", similarity))  # fmt: skip
        for a, b in zip(*np.nonzero(~in_val[group][:, None] & in_val[group][None, :]),
                        strict=True):  # fmt: skip
            train_row, val_row = catalog.row_ids[group[a]], catalog.row_ids[group[b]]
            leaks.append(Leak(int(train_row), int(val_row), round(float(cosines[a, b]), 6)))

    suspect_score, suggested = suspect_labels(
        catalog.labels, catalog.labels[neighbors], scores, len(catalog.class_names)
    )
    suspects = [
        SuspectLabel(int(catalog.row_ids[i]), catalog.class_names[catalog.labels[i]],
                     catalog.class_names[suggested[i]], round(float(suspect_score[i]), 6))
        for i in np.lexsort((catalog.row_ids, -suspect_score))
        if suspect_score[i] > SUSPECT_SCORE
    ]  # fmt: skip

    appearance = np.asarray(catalog.appearance)
    closest, _ = make_index(config).fit(appearance).search_catalog(1)  # (N, 1) cosines
    outlier_score = 1 - closest[:, 0].astype(np.float64)
    outliers = [
        Outlier(int(catalog.row_ids[i]), round(float(outlier_score[i]), 6))
        for i in np.lexsort((catalog.row_ids, -outlier_score))
        if closest[i, 0] < catalog.no_close_match_below
    ]
    thresholds = {
        "near_duplicate_cosine": round(float(copy_cosine), 6),
        "near_duplicate_calibration": f"quantile {COPY_QUANTILE} of the embedding cosine "
        f"between {min(COPY_SAMPLE, n)} catalog images and their copies at half resolution "
        f"and JPEG quality {COPY_JPEG_QUALITY}, or quantile {DISTINCT_QUANTILE} of each "
        "validation image's cosine to its nearest training image where that is higher"
        + ("" if len(catalog.val_index) else " (this catalog has no split: no such floor)"),
        "suspect_score_above": SUSPECT_SCORE,
        "suspect_neighbors": k,
        "outlier_appearance_below": catalog.no_close_match_below,
    }
    return AuditReport(found, leaks, suspects, outliers, thresholds), neighbors


def mostly_suspect(report: AuditReport, catalog_size: int) -> str | None:
    """One line when the audit calls most of the catalog's labels suspect: then the vectors,
    not the labels, are the likely fault. None otherwise."""
    if len(report.suspect_labels) * 2 <= catalog_size:
        return None
    return (
        f"the audit calls {len(report.suspect_labels)} of {catalog_size} labels suspect: the "
        "model's vectors do not separate the classes, so the model most likely did not learn "
        "(too few images or epochs, or the lr); its labels are probably not at fault"
    )


FIGURE_ROWS = 8  # groups or suspects a figure shows
FIGURE_COLUMNS = 6


def _caption(catalog: Catalog, position: int) -> str:
    label = label_name(catalog.class_names, catalog.labels[position]) or "unlabeled"
    return f"#{catalog.row_ids[position]}  {label}"


def duplicates_figure(report: AuditReport, catalog: Catalog):
    """The first FIGURE_ROWS duplicate groups, one a row: its images with row ids and labels."""
    from imgrec.recommender.plotting import message_figure, recommendation_figure

    if not report.duplicates:
        return message_figure("No duplicates found")
    groups = [catalog.positions(np.asarray(g.row_ids)) for g in report.duplicates[:FIGURE_ROWS]]
    return recommendation_figure(
        [catalog.images[g[0]] for g in groups],
        [_caption(catalog, g[0]) for g in groups],
        [[catalog.images[p] for p in g[1:FIGURE_COLUMNS]] for g in groups],
        [[_caption(catalog, p) for p in g[1:FIGURE_COLUMNS]] for g in groups],
        title=f"{len(report.duplicates)} duplicate groups (row id, label), the first "
        f"{len(groups)} shown; one group a row"
        if groups
        else "No duplicates found",
    )


def suspect_labels_figure(report: AuditReport, catalog: Catalog, neighbors: np.ndarray):
    """The most suspect labels, one a row: the item, then its nearest items (row id, label);
    `neighbors` (N, k): every item's nearest positions."""
    from imgrec.recommender.plotting import message_figure, recommendation_figure

    if not report.suspect_labels:
        return message_figure("No suspect labels found")
    shown = report.suspect_labels[:FIGURE_ROWS]
    positions = catalog.positions(np.asarray([s.row_id for s in shown], np.int64))
    near = [neighbors[p][: FIGURE_COLUMNS - 1] for p in positions]
    return recommendation_figure(
        [catalog.images[p] for p in positions],
        [f"#{s.row_id}  {s.label}\n-> {s.suggested}? ({s.score:.2f})" for s in shown],
        [[catalog.images[q] for q in row] for row in near],
        [[_caption(catalog, q) for q in row] for row in near],
        title=f"{len(report.suspect_labels)} suspect labels, the most suspect first: the "
        "item (left, its label -> the suggested one) and its nearest items"
        if shown
        else "No suspect labels found",
    )
