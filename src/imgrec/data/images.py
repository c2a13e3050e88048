"""Decoding untrusted image bytes into RGB arrays of one size, and back to tensors.

Prepare, the query command and the figures all go through `decode`, so a
catalog image and the same image given as a query are preprocessed alike.
"""

import io
import warnings

import numpy as np
import simplejpeg
from PIL import ExifTags, Image, ImageMode, ImageOps, UnidentifiedImageError

# What `decode` raises, mapped to the reason counted in prepare's report.
SKIP_REASONS = ("null_image", "undecodable", "too_large")
# The formats photo datasets use; PIL tries no other plugin. Image bytes come from strangers:
# EPS, for one, would make PIL run Ghostscript on them.
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
# 16-bit, 32-bit and float modes: `to_rgb` scales them to 8 bits, _ROWS rows at a time.
_SCALED_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
_ROWS = 256

# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class SkippedImage(Exception):
    """An image that cannot become a training example; `reason` is one of SKIP_REASONS."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail or reason)
        self.reason = reason


def decoded_bytes(image: Image.Image, img_size: int) -> int:
    """The memory decoding an opened (header-only) image holds at its peak: its pixels as
    PIL stores them (bytes per pixel from the mode: 1 for 8-bit grey and palette, 2 for
    16-bit, 4 for 32-bit and float and for several 8-bit bands), plus what `to_rgb` makes
    of them at full size before the resize, at the reduced scale a JPEG decodes at."""
    width, height = image.size
    if image.format == "JPEG":
        # The DCT scales (1/8 .. 1) keep both sides >= img_size; count the coarsest
        # power of two, which decodes at least as many pixels as the scale used.
        scale = next(
            s for s in (8, 4, 2, 1) if s == 1 or min(-(-width // s), -(-height // s)) >= img_size
        )
        width, height = -(-width // scale), -(-height // scale)
    mode = ImageMode.getmode(image.mode)
    itemsize = np.dtype(mode.typestr).itemsize
    stored = itemsize if len(mode.bands) == 1 else 4 * itemsize
    if image.format == "JPEG" and image.mode in ("RGB", "L"):
        converted = 3  # libjpeg's RGB array, then PIL's copy of it (`stored`)
    elif image.mode == "RGB":
        converted = 0
    elif image.mode in _SCALED_MODES:
        converted = itemsize + 1 + 4  # a copy as an array, 8-bit grey, RGB
    elif "A" in mode.bands or "a" in mode.bands or "transparency" in image.info:
        converted = 4 * 4  # RGBA, a white background, the composite, RGB
    else:
        converted = 4  # RGB
    return width * height * (stored + converted)


def decode(data: bytes | None, img_size: int, max_decoded_bytes: int | None = None) -> np.ndarray:
    """Decode image bytes to a (img_size, img_size, 3) uint8 RGB array.

    Only FORMATS are opened. Any mode PIL reads becomes RGB; transparency is
    flattened onto white so a transparent background does not turn black. Images
    over PIL's decompression-bomb limit, or whose pixels would take more than
    `max_decoded_bytes` (`decoded_bytes`: a server's budget), are refused from their
    header, before their pixels are decoded. Whatever else goes wrong on these bytes is a
    SkippedImage, never a crash.
    """
    if data is None or len(data) == 0:
        raise SkippedImage("null_image")
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:  # the header only
                cost = decoded_bytes(image, img_size)
                if max_decoded_bytes is not None and cost > max_decoded_bytes:
                    width, height = image.size
                    raise SkippedImage(
                        "too_large",
                        f"{width}x{height} {image.mode} pixels take {cost / 2**20:.0f} MB to "
                        f"decode, over the {max_decoded_bytes / 2**20:g} MB budget",
                    )
                if image.format == "JPEG" and image.mode in ("RGB", "L"):
                    rgb = _decode_jpeg_scaled(data, image, img_size)
                else:
                    # Other JPEGs (CMYK) decode at a reduced scale too; other formats in full.
                    image.draft("RGB", (img_size, img_size))
                    ImageOps.exif_transpose(image, in_place=True)  # in place: no copy
                    rgb = to_rgb(image)
                rgb = rgb.resize((img_size, img_size), Image.Resampling.BILINEAR)
                return np.asarray(rgb, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise SkippedImage("too_large", str(error)) from error
    except SkippedImage:
        raise
    except UnidentifiedImageError as error:
        raise SkippedImage("undecodable", "not an image in an accepted format") from error
    except Exception as error:  # PIL's plugins raise anything on hostile bytes
        raise SkippedImage("undecodable", f"{type(error).__name__}: {error}") from error


def _decode_jpeg_scaled(data: bytes, header: Image.Image, img_size: int) -> Image.Image:
    """Decode a JPEG with libjpeg-turbo at the smallest of its DCT scales (n/8) >= img_size.

    PIL's draft offers only 1/2, 1/4 and 1/8, so a 460 px photo decodes at
    230 px and is resized from there; at 3/8 it decodes at 173 px, with less
    inverse-DCT and resize work. Smaller images are decoded at full size.
    """
    pixels = simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=img_size, min_width=img_size)
    rgb = Image.fromarray(pixels)
    upright = _UPRIGHT.get(header.getexif().get(ExifTags.Base.Orientation))
    return rgb.transpose(upright) if upright is not None else rgb


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode to RGB: 16-bit and float scaled to 8 bits, alpha composited on white."""
    if image.mode == "RGB":
        return image  # most photos: convert() would only copy
    if image.mode in _SCALED_MODES:
        pixels = np.asarray(image)  # its own type: float64 copies of a big image cost 4-8x
        low, high = float(pixels.min()), float(pixels.max())
        grey = np.zeros(pixels.shape, np.uint8)
        if high > low:
            factor = 255.0 / (high - low)
            for top in range(0, len(pixels), _ROWS):  # in float64 a strip at a time: same bits
                strip = pixels[top : top + _ROWS].astype(np.float64)
                grey[top : top + _ROWS] = np.rint((strip - low) * factor).astype(np.uint8)
        image = Image.fromarray(grey, mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")
