"""Stage embed: the catalog, each prepared image's embedding and appearance vectors, and the
"no close match" threshold calibrated on it.

Calibration: every validation image's appearance cosine to its nearest training
image; the threshold is the NOVELTY_QUANTILE of those. Validation images are what
new images drawn like the catalog's look like to a model that never trained on
them (training images sit closer together), so about that share of such new
images is flagged; a query whose nearest catalog item is less alike than the
threshold is "unlike the catalog".
"""

from dataclasses import dataclass

import numpy as np

from imgrec.catalog import NOVELTY_QUANTILE
from imgrec.config import ComputeConfig
from imgrec.neighbors import ExactIndex


@dataclass(frozen=True)
class EmbedConfig(ComputeConfig):
    pass


def no_close_match_threshold(
    appearance: np.ndarray, train_index: np.ndarray, val_index: np.ndarray
) -> float:
    """The NOVELTY_QUANTILE of each validation image's appearance cosine to its nearest
    training image."""
    nearest, _ = ExactIndex().fit(appearance[train_index]).search(appearance[val_index], 1)
    return float(np.quantile(nearest[:, 0], NOVELTY_QUANTILE))
