"""imgrec: an image classifier and a "more like this" recommender as a DVC pipeline."""

from imgrec.errors import ImgrecError

__all__ = ["ImgrecError"]
__version__ = "0.1.0"
