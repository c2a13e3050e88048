"""The one query API, which the CLI and the server both call: load the model and the catalog
once and check they are in step, read and decode query images exactly as prepare decodes
the catalog's, embed them as embed does (`inference.catalog_vectors`), search with
`neighbors.ExactIndex` as recommend does, collapse duplicates as recommend does (where the
audit has run), and judge novelty. So any front end gives the same bits; a catalog image
given as a query is reported as a duplicate of itself and its copies are left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imgrec.errors import ImgrecError, first_line
from imgrec.serving.query_images import (  # noqa: F401  (callers import them from here)
    UnusableQuery,
    decode_image,
    describe,
    load_image,
    load_images,
    read_image,
)

# torch, fsspec and the catalog load on first use, so a front end's `--help` and argument
# errors answer at once instead of after seconds of imports.
if TYPE_CHECKING:
    import numpy as np
    import torch

    from imgrec.data.duplicates import Fingerprint
    from imgrec.recommender.catalog import Catalog
    from imgrec.recommender.recommendations import Recommendations
    from imgrec.training.checkpoint import Checkpoint

# Relative to the repository root (the folder holding dvc.yaml): where dvc.yaml writes them.
DEFAULT_MODEL = "models/model.pt"
DEFAULT_CATALOG = "data/embeddings"
DEFAULT_PREPARED = "data/catalog/prepared"  # the catalog's images: the training data by default
DEFAULT_RECOMMENDATIONS = "data/recommendations.parquet"
DEFAULT_AUDIT = "reports/audit.json"  # optional for every front end
DEFAULT_HASHES = "data/catalog/image_hashes.parquet"
DEFAULT_CATALOG_MAP = "reports/catalog_map.csv"  # the page's map of the catalog (audit's)
DEFAULT_CORRECTIONS = "labels/corrections.csv"  # prepare's --corrections; review writes it


@dataclass(frozen=True)
class Neighbor:
    rank: int
    row_id: int
    label: str | None  # None: a catalog item without a label
    score: float


def has_dvc_remote(root: Path | None = None) -> bool:
    """Whether the project's DVC config (shared or local) names a remote to pull from."""
    root = root or find_repo_root()
    for name in ("config", "config.local"):
        try:
            text = (root / ".dvc" / name).read_text()
        except OSError:
            continue
        if re.search(r"^\s*\[\s*'?\"?remote\s", text, flags=re.MULTILINE):
            return True
    return False


def find_repo_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` (default: cwd) holding dvc.yaml, else `start`."""
    start = (start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return start


class UnknownItem(ImgrecError):
    """A row id that is no item of the catalog."""


def check_catalog(model_path: Path, catalog: Catalog) -> None:
    """Refuse a catalog that was not embedded by this very checkpoint file."""
    from imgrec.training.checkpoint import checkpoint_md5

    if catalog.model_md5 != checkpoint_md5(model_path):
        raise ImgrecError(
            "the catalog was not made by this model; run `dvc repro` to bring them in step."
        )


@dataclass(frozen=True)
class CatalogDuplicates:
    """The catalog's duplicate groups (the audit's) and what makes a query a duplicate:
    prepare's hash cut, and the audit's embedding cut."""

    groups: np.ndarray  # (N,) per catalog position; equal within a duplicate group
    fingerprints: list[Fingerprint]  # (N,)
    near_duplicate_bits: int
    near_duplicate_cosine: float

    @classmethod
    def load(cls, audit: Path, hashes: Path, catalog: Catalog) -> CatalogDuplicates:
        import numpy as np

        from imgrec.data.image_hashes import load_image_hashes
        from imgrec.recommender.audit_report import load_report

        report, image_hashes = load_report(audit), load_image_hashes(hashes)
        if not np.array_equal(image_hashes.row_ids, catalog.row_ids):
            raise ImgrecError(f"the image hashes in {hashes} do not match the catalog; run "
                              "`dvc repro` to bring them in step.")  # fmt: skip
        return cls(
            report.duplicate_groups(catalog.row_ids),
            image_hashes.fingerprints,
            image_hashes.near_duplicate_bits,
            float(report.thresholds["near_duplicate_cosine"]),
        )

    def of_queries(self, images: np.ndarray, scores: np.ndarray, positions: np.ndarray):
        """Per query, the catalog positions it duplicates, whole groups (ascending): equal
        or near by hash, or its nearest item when as alike as a copy (`scores`,
        `positions`: each query's nearest items, (Q, K)), as the audit judges pairs."""
        import numpy as np

        from imgrec.data.duplicates import fingerprint, near_matches

        found = [set() for _ in images]
        queries = [fingerprint(image) for image in images]
        for q, p, _ in zip(*near_matches(queries, self.fingerprints, self.near_duplicate_bits),
                           strict=True):  # fmt: skip
            found[q].add(int(p))
        for q in np.flatnonzero(scores[:, 0] >= self.near_duplicate_cosine):
            found[q].add(int(positions[q, 0]))
        groups = [np.unique(self.groups[sorted(f)]) for f in found]
        return [np.flatnonzero(np.isin(self.groups, g)) for g in groups]


def search(
    catalog: Catalog,
    queries: np.ndarray,
    top_k: int,
    duplicates: CatalogDuplicates | None = None,
    images: np.ndarray | None = None,
) -> tuple[list[list[Neighbor]], list[list[int]]]:
    """The top-k catalog items for each query embedding, best first, and the row ids of
    the catalog items each query duplicates. With `duplicates` (and the query `images`),
    no two of a top-k are duplicates of each other, and none duplicates its query."""
    import numpy as np

    from imgrec.data.duplicates import collapsed_search

    index = catalog.embedding_index  # fitted once per catalog
    n = len(catalog.row_ids)
    if duplicates is None:
        scores, positions = index.search(queries, top_k)  # (Q, k)
        copies = [np.empty(0, np.int64) for _ in queries]
    else:
        copies = duplicates.of_queries(images, *index.search(queries, 1))
        width = max((len(c) for c in copies), default=0)
        excluded = np.full((len(queries), max(width, 1)), -1, np.int64)
        for row, positions_of_copies in enumerate(copies):
            excluded[row, : len(positions_of_copies)] = duplicates.groups[positions_of_copies]
        scores, positions = collapsed_search(
            lambda k: index.search(queries, k), n, top_k, duplicates.groups, excluded
        )
    from imgrec.data.prepared import label_name

    results = [
        [
            Neighbor(
                rank=rank,
                row_id=int(catalog.row_ids[p]),
                label=label_name(catalog.class_names, catalog.labels[p]),
                score=round(float(s), 6),  # float32 holds about 7 digits
            )
            for rank, (p, s) in enumerate(zip(row_positions, row_scores, strict=True), start=1)
        ]
        for row_positions, row_scores in zip(positions, scores, strict=True)
    ]
    return results, [catalog.row_ids[c].tolist() for c in copies]


def item_position(catalog: Catalog, row_id: int) -> int:
    """The position of a row id in the catalog's arrays."""
    import numpy as np

    position = int(catalog.positions(np.asarray([row_id]))[0])
    if position == len(catalog.row_ids) or catalog.row_ids[position] != row_id:
        raise UnknownItem(f"no catalog item has row id {row_id}.")
    return position


def item_neighbors(
    catalog: Catalog, recommendations: Recommendations, row_id: int
) -> list[Neighbor]:
    """A catalog item's top-k as the recommend stage stored them, best first."""
    from imgrec.data.prepared import label_name

    neighbor_ids, scores = recommendations.of(row_id)
    labels = catalog.labels[catalog.positions(neighbor_ids)]
    return [
        Neighbor(rank, int(n), label_name(catalog.class_names, label), round(float(s), 6))
        for rank, (n, label, s) in enumerate(zip(neighbor_ids, labels, scores, strict=True), 1)
    ]


@dataclass(frozen=True)
class Novelty:
    """Whether a query is unlike every catalog image (see `imgrec.recommender.catalog`,
    calibration)."""

    no_close_match: bool
    appearance_similarity: float  # cosine to the most alike catalog item
    threshold: float

    def note(self) -> str:
        from imgrec.recommender.catalog import NOVELTY_QUANTILE

        return (
            f"no close match: unlike every catalog image (appearance similarity "
            f"{self.appearance_similarity:.3f} < {self.threshold:.3f}, which "
            f"{1 - NOVELTY_QUANTILE:.0%} of validation images exceed with their nearest "
            "training image)"
        )


def novelty(catalog: Catalog, appearance: np.ndarray) -> list[Novelty]:
    """Each query's appearance against the catalog's threshold."""
    closest = catalog.closest_appearance(appearance)
    threshold = catalog.no_close_match_below
    return [Novelty(bool(c < threshold), round(float(c), 6), threshold) for c in closest]


def recommend_answer(
    query: str | None, neighbors: list[Neighbor], novel: Novelty, duplicate_of: list[int]
) -> dict:
    """One image's answer as `recommend --json` prints it and the server sends it."""
    return {
        "query": query,
        "no_close_match": novel.no_close_match,
        "appearance_similarity": novel.appearance_similarity,
        "duplicate_of": duplicate_of,
        "results": [vars(neighbor) for neighbor in neighbors],
    }


def classify_answer(
    image: str | None, label: str, probability: float, no_close_match: bool | None
) -> dict:
    """One image's answer as `classify --json` prints it and the server sends it."""
    return {
        "image": image,
        "label": label,
        "probability": probability,
        "no_close_match": no_close_match,
    }


@dataclass
class Recommender:
    """The model and, when it is there and in step, the catalog: loaded once, queried often."""

    checkpoint: Checkpoint
    device: torch.device
    catalog: Catalog | None
    why_no_catalog: str | None = None  # when catalog is None
    duplicates: CatalogDuplicates | None = None  # where the audit has run

    @classmethod
    def load(
        cls, model: Path, catalog: Path, prepared: Path, device: str = "auto",
        *, need_catalog: bool = True, audit: Path | None = None, hashes: Path | None = None,
        mapped: bool = True,
    ) -> Recommender:  # fmt: skip
        """The checkpoint on `device`, and its catalog (required unless `need_catalog` is
        False: a classifier needs none, its novelty flag does). Where the audit report and
        image hashes exist, results collapse duplicates as recommend's do. `mapped` False:
        nothing memory-mapped (`catalog.load_catalog`), for a server."""
        from imgrec.pipeline.runtime import pick_device, set_precision
        from imgrec.recommender.catalog import load_catalog
        from imgrec.training.checkpoint import load_checkpoint

        torch_device = pick_device(device)
        set_precision("fp32")  # as the embed stage computes the catalog: no TF32 on a GPU
        checkpoint = load_checkpoint(model, torch_device)
        try:
            loaded = load_catalog(catalog, prepared, mapped)
            check_catalog(model, loaded)
        except ImgrecError as error:
            if need_catalog:
                raise
            return cls(checkpoint, torch_device, None, first_line(error))
        known = audit is not None and hashes is not None and audit.exists() and hashes.exists()
        duplicates = CatalogDuplicates.load(audit, hashes, loaded) if known else None
        return cls(checkpoint, torch_device, loaded, duplicates=duplicates)

    @property
    def img_size(self) -> int:
        return self.checkpoint.img_size

    def check_top_k(self, top_k: int) -> None:
        """Refuse a k larger than the catalog (a front end asks before reading any image)."""
        size = len(self.catalog.row_ids)
        if top_k > size:
            raise ImgrecError(f"--top-k {top_k} is more than the {size} catalog items.")

    def recommend(
        self, images: np.ndarray, top_k: int, batch_size: int = 256
    ) -> tuple[list[list[Neighbor]], list[Novelty], list[list[int]]]:
        """Each image's top-k catalog items, its novelty against the catalog, and the row
        ids of the catalog items it duplicates."""
        from imgrec.training.inference import catalog_vectors

        self.check_top_k(top_k)
        queries, appearance = catalog_vectors(
            self.checkpoint.model, images, batch_size=batch_size, device=self.device
        )
        results, copies = search(self.catalog, queries, top_k, self.duplicates, images)
        return results, novelty(self.catalog, appearance), copies

    def classify(
        self, images: np.ndarray, batch_size: int = 256
    ) -> list[tuple[str, float, bool | None]]:
        """Each image's (class name, probability, no close match: None without a catalog)."""
        from imgrec.training.inference import embed, predict_logits

        model = self.checkpoint.model
        logits = predict_logits(model, images, batch_size=batch_size, device=self.device)
        probabilities, classes = logits.softmax(dim=1).max(dim=1)
        novel = [None] * len(images)
        if self.catalog is not None:
            appearance = embed(model, images, space="appearance", device=self.device)
            novel = [n.no_close_match for n in novelty(self.catalog, appearance)]
        names = self.checkpoint.class_names
        return [
            (names[c], round(p, 6), n)
            for c, p, n in zip(classes.tolist(), probabilities.tolist(), novel, strict=True)
        ]
