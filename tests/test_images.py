"""decode: every mode and format PIL writes becomes (S, S, 3) uint8; bad bytes are skipped."""

import io

import numpy as np
import pytest
import torch
from conftest import image_bytes, jpeg_bytes, png_bytes
from PIL import Image, ImageOps

from imgrec.data.images import SKIP_REASONS, SkippedImage, decode
from imgrec.training.inference import to_tensor

SIZE = 6
WHITE = (255, 255, 255)

# (mode, format): every pairing PIL can write, each a solid image of a mid colour.
MODES_AND_FORMATS = [
    ("RGB", "JPEG"),
    ("RGB", "PNG"),
    ("RGB", "WEBP"),
    ("RGB", "GIF"),
    ("RGB", "BMP"),
    ("RGB", "TIFF"),
    ("L", "JPEG"),
    ("L", "PNG"),
    ("L", "WEBP"),
    ("L", "GIF"),
    ("L", "BMP"),
    ("L", "TIFF"),
    ("LA", "PNG"),
    ("LA", "TIFF"),
    ("P", "PNG"),
    ("P", "GIF"),
    ("P", "BMP"),
    ("P", "TIFF"),
    ("RGBA", "PNG"),
    ("RGBA", "WEBP"),
    ("RGBA", "TIFF"),
    ("RGBA", "GIF"),
    ("CMYK", "JPEG"),
    ("CMYK", "TIFF"),
    ("I;16", "PNG"),
    ("I;16", "TIFF"),
    ("I", "TIFF"),
    ("F", "TIFF"),
    ("1", "PNG"),
    ("1", "BMP"),
    ("1", "GIF"),
    ("1", "TIFF"),
]


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _solid(mode: str) -> Image.Image:
    colour = {
        "RGB": (10, 120, 230),
        "RGBA": (10, 120, 230, 255),
        "L": 120,
        "LA": (120, 255),
        "P": 7,
        "CMYK": (0, 128, 255, 0),
        "I;16": 30000,
        "I": 30000,
        "F": 0.5,
        "1": 1,
    }[mode]
    return Image.new(mode, (5, 3), colour)


@pytest.mark.parametrize(
    ("mode", "fmt"), MODES_AND_FORMATS, ids=[f"{m}-{f}" for m, f in MODES_AND_FORMATS]
)
def test_decode_any_mode_and_format_to_rgb_uint8(mode, fmt):
    data = _encode(_solid(mode), fmt)
    # Check the test itself: the file really is in that format.
    assert Image.open(io.BytesIO(data)).format == fmt
    pixels = decode(data, SIZE)
    assert pixels.shape == (SIZE, SIZE, 3)
    assert pixels.dtype == np.uint8


@pytest.mark.parametrize(
    ("mode", "fmt", "expected"),
    [
        ("RGB", "PNG", (10, 120, 230)),
        ("RGBA", "PNG", (10, 120, 230)),
        ("L", "PNG", (120, 120, 120)),
        ("LA", "PNG", (120, 120, 120)),
        ("1", "PNG", (255, 255, 255)),
        ("CMYK", "TIFF", (255, 127, 0)),
    ],
)
def test_decode_keeps_colours(mode, fmt, expected):
    pixels = decode(_encode(_solid(mode), fmt), SIZE)
    np.testing.assert_allclose(pixels.reshape(-1, 3), [expected] * SIZE * SIZE, atol=1)


@pytest.mark.parametrize(("mode", "fmt"), [("I;16", "PNG"), ("I;16", "TIFF"), ("F", "TIFF")])
def test_decode_scales_high_bit_depth_to_full_8_bit_range(mode, fmt):
    dtype = np.float32 if mode == "F" else np.uint16
    ramp = np.linspace(100, 60000, 16, dtype=np.float64).reshape(4, 4).astype(dtype)
    image = Image.fromarray(ramp)
    assert image.mode == mode
    data = _encode(image, fmt)
    pixels = decode(data, 4)
    assert pixels.min() == 0
    assert pixels.max() == 255
    # Grey stays grey, and the ramp still rises left to right.
    assert (pixels[..., 0] == pixels[..., 2]).all()
    assert (np.diff(pixels[..., 0].astype(int), axis=1) >= 0).all()


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF", "GIF"])
def test_transparent_rgba_becomes_white(fmt):
    data = _encode(Image.new("RGBA", (4, 4), (0, 0, 0, 0)), fmt)
    assert (decode(data, SIZE) == 255).all()


def test_transparent_la_becomes_white():
    data = _encode(Image.new("LA", (4, 4), (0, 0)), "PNG")
    assert (decode(data, SIZE) == 255).all()


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_with_transparent_index_becomes_white(fmt):
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0] * 256)  # every entry black: only transparency can make white
    data = _encode(image, fmt, transparency=0)
    assert "transparency" in Image.open(io.BytesIO(data)).info
    assert (decode(data, SIZE) == 255).all()


def test_half_transparent_pixels_blend_onto_white():
    data = _encode(Image.new("RGBA", (2, 2), (0, 0, 0, 128)), "PNG")
    pixels = decode(data, 2)
    assert np.all((pixels >= 125) & (pixels <= 128))


@pytest.mark.parametrize("size", [(1, 1), (4000, 2), (2, 4000), (3, 1)])
def test_tiny_and_extremely_wide_images(size):
    data = png_bytes(size, (40, 50, 60))
    pixels = decode(data, 16)
    assert pixels.shape == (16, 16, 3)
    assert (pixels == (40, 50, 60)).all()


def test_large_jpeg_is_decoded_to_size():
    # draft() decodes big JPEGs at a reduced scale; the result must still be exactly S x S.
    pixels = decode(jpeg_bytes((800, 600), (200, 30, 60)), 7)
    assert pixels.shape == (7, 7, 3)
    np.testing.assert_allclose(pixels.reshape(-1, 3).mean(axis=0), (200, 30, 60), atol=4)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pil_does(fmt, orientation):
    # Left quarter red, the rest blue, top rows green: every transpose looks different.
    image = Image.new("RGB", (64, 32), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 16, 32))
    image.paste((0, 255, 0), (16, 0, 64, 8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = _encode(image, fmt, exif=exif, **({"quality": 95} if fmt == "JPEG" else {}))
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data)).convert("RGB"))
    expected = np.asarray(expected.resize((16, 16), Image.Resampling.BILINEAR), dtype=int)
    # JPEG decodes at a reduced DCT scale (a few levels off at these sharp edges); a wrong
    # orientation would put blue on red over a quarter of the image (mean difference > 40).
    assert np.abs(decode(data, 16).astype(int) - expected).mean() < 10


def test_large_jpeg_matches_a_full_decode_and_resize():
    # Decoded at a reduced DCT scale, then resized: close to decoding every pixel.
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 460)[None, :, None] * np.ones((410, 1, 3))
    noisy = np.clip(gradient + rng.normal(0, 8, gradient.shape), 0, 255).astype(np.uint8)
    data = _encode(Image.fromarray(noisy), "JPEG", quality=90)
    full = Image.open(io.BytesIO(data)).convert("RGB").resize((128, 128), Image.Resampling.BILINEAR)
    difference = np.abs(decode(data, 128).astype(int) - np.asarray(full, dtype=int))
    assert difference.mean() < 2.0


def test_output_is_deterministic():
    data = jpeg_bytes((37, 23), (90, 180, 20))
    assert np.array_equal(decode(data, 9), decode(data, 9))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "null_image"),
        (b"", "null_image"),
        (b"this is not an image at all", "undecodable"),
        (bytes(range(256)) * 4, "undecodable"),
        (png_bytes((32, 32))[:60], "undecodable"),
        (jpeg_bytes((64, 64))[:200], "undecodable"),
        (b"\x89PNG\r\n\x1a\n", "undecodable"),  # a PNG signature and nothing else
    ],
    ids=["none", "empty", "text", "garbage", "truncated-png", "truncated-jpeg", "png-signature"],
)
def test_bad_bytes_are_skipped_with_reason(data, reason):
    with pytest.raises(SkippedImage) as info:
        decode(data, SIZE)
    assert info.value.reason == reason
    assert info.value.reason in SKIP_REASONS


@pytest.mark.parametrize("pixels", [(20, 20), (15, 10)], ids=["over-2x-limit", "over-1x-limit"])
def test_decompression_bomb_is_refused_without_decoding(monkeypatch, pixels):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    full = png_bytes(pixels)
    # Cut the file where the pixel data starts: its size is known, its pixels are not.
    # Had decode got as far as the pixels it would report "undecodable", not "too_large".
    header_only = full[: full.index(b"IDAT") + 4]
    for data in (full, header_only):
        with pytest.raises(SkippedImage) as info:
            decode(data, SIZE)
        assert info.value.reason == "too_large"


def test_image_under_the_limit_is_decoded(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert decode(png_bytes((10, 10)), SIZE).shape == (SIZE, SIZE, 3)


def test_header_only_image_is_undecodable_when_under_the_limit():
    # The control for the bomb test: the same cut file, with the default limit.
    full = png_bytes((20, 20))
    with pytest.raises(SkippedImage) as info:
        decode(full[: full.index(b"IDAT") + 4], SIZE)
    assert info.value.reason == "undecodable"


def test_to_tensor_layout_dtype_and_range(rng):
    batch = rng.integers(0, 256, size=(2, 5, 7, 3), dtype=np.uint8)  # (B, H, W, 3)
    batch[0, 0, 0] = (0, 128, 255)
    tensor = to_tensor(batch)
    assert tensor.shape == (2, 3, 5, 7)
    assert tensor.dtype == torch.float32
    assert tensor.min() >= 0.0
    assert tensor.max() <= 1.0
    assert tensor[0, :, 0, 0].tolist() == pytest.approx([0.0, 128 / 255, 1.0])
    np.testing.assert_allclose(tensor.permute(0, 2, 3, 1).numpy() * 255, batch, atol=1e-4)


def test_to_tensor_accepts_non_contiguous_and_memmapped_input(tmp_path):
    array = np.lib.format.open_memmap(
        tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=(3, 4, 4, 3)
    )
    array[:] = 255
    tensor = to_tensor(array[::2])  # a strided view of a memory map
    assert tensor.shape == (2, 3, 4, 4)
    assert torch.all(tensor == 1.0)


def test_image_bytes_helper_makes_the_requested_format():
    data = image_bytes((3, 2), (1, 2, 3), "RGB", "BMP")
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size, image.mode) == ("BMP", (3, 2), "RGB")


# Headers of formats PIL knows but a photo dataset does not use. EPS would start
# Ghostscript; DDS with an unknown pixel format and IM raised NotImplementedError/TypeError.
HOSTILE = {
    "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n",
    "eps-binary": b"\xc5\xd0\xd3\xc6" + b"\x00" * 28 + b"%!PS-Adobe-3.0\n",
    "dds-unknown-pixel-format": b"DDS " + (124).to_bytes(4, "little") + b"\x07\x10\x00\x00"
    + b"\x08\x00\x00\x00" * 2 + b"\x00" * 56 + (32).to_bytes(4, "little") + b"\x04\x00\x00\x00"
    + b"XYZW" + b"\x00" * 40,
    "im": b"Image type: RGB image\r\nName: x\r\nImage size (x*y): 2*2\r\n\x1a" + b"\x00" * 600,
    "pdf": b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n",
    "svg": b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>',
}  # fmt: skip


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_other_formats_are_skipped_and_start_no_program(monkeypatch, data):
    def no_program(*args, **kwargs):
        raise AssertionError(f"decode tried to start a program: {args}")

    import subprocess

    for name in ("Popen", "run", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, no_program)
    with pytest.raises(SkippedImage) as info:
        decode(data, SIZE)
    assert info.value.reason == "undecodable"


def test_every_accepted_format_decodes():
    from imgrec.data.images import FORMATS

    for fmt in FORMATS:
        assert decode(image_bytes((5, 4), (10, 20, 30), "RGB", fmt), SIZE).shape == (SIZE, SIZE, 3)


def _mutations(data: bytes, rng: np.random.Generator, count: int):
    """Seeded byte flips, truncations, insertions and chunk repeats of one valid image."""
    for _ in range(count):
        blob = bytearray(data)
        kind = rng.integers(4)
        if kind == 0:
            for at in rng.integers(0, len(blob), rng.integers(1, 8)):
                blob[at] = rng.integers(256)
        elif kind == 1:
            del blob[rng.integers(1, len(blob)) :]
        elif kind == 2:
            at = rng.integers(0, len(blob))
            blob[at:at] = rng.integers(0, 256, rng.integers(1, 64), dtype=np.uint8).tobytes()
        else:
            start = rng.integers(0, len(blob))
            blob[start:start] = blob[start : start + rng.integers(1, 200)] * 3
        yield bytes(blob)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_fuzzed_images_decode_or_are_skipped_nothing_else(fmt):
    rng = np.random.default_rng(list(fmt.encode()))
    pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    decoded, reasons = 0, []
    for blob in _mutations(buffer.getvalue(), rng, 300):
        try:
            out = decode(blob, SIZE)
        except SkippedImage as skip:  # anything else escaping decode fails the test
            reasons.append(skip.reason)
        else:
            assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.uint8
            decoded += 1
    assert decoded + len(reasons) == 300
    assert reasons and set(reasons) <= set(SKIP_REASONS)  # the mutations did break some
