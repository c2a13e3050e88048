"""imgrec: an image classifier and a "more like this" recommender as a DVC pipeline."""

# First, before any module below loads numpy or torch: their kernels are chosen at load.
from imgrec.pipeline import kernels

kernels.apply_from_environment()

from imgrec.errors import ImgrecError  # noqa: E402 - after the kernels on purpose

__all__ = ["ImgrecError"]
__version__ = "0.1.0"
