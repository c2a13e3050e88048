"""A synthetic image catalog shaped like the reference dataset, deterministic from its seed.

Parquet in the Hugging Face Image schema (`image` = struct<bytes, path>, `label` = int64,
ClassLabel names in the `huggingface` schema metadata), about 2,000 rows a file (at least
four files) in 100-row row groups; JPEGs of 400-600 px per side, 45-120 KB (mean ~78 KB).
Ten classes, each a colour palette and a shape family, balanced and shuffled.
"""

import io
import itertools
import json
import multiprocessing
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter

GENERATOR = 2  # bump when the images change, so an old catalog is not reused
# name: (background, foreground, polygon sides (0 ellipse, 2 line), filled, blur radius)
CLASSES = {
    "red_circles": ((250, 220, 200), (200, 40, 30), 0, True, 0),
    "blue_squares": ((210, 225, 250), (30, 60, 190), 4, True, 0),
    "green_triangles": ((215, 240, 210), (40, 150, 50), 3, True, 0),
    "purple_hexagons": ((235, 215, 245), (120, 40, 150), 6, True, 0),
    "yellow_rings": ((250, 250, 205), (220, 180, 20), 0, False, 0),
    "cyan_frames": ((210, 245, 250), (20, 170, 200), 4, False, 0),
    "magenta_pentagons": ((250, 215, 240), (210, 40, 170), 5, False, 0),
    "teal_blobs": ((205, 235, 230), (20, 120, 110), 0, True, 4),
    "brown_lines": ((240, 228, 210), (110, 70, 30), 2, True, 0),
    "grey_clouds": ((225, 225, 225), (110, 110, 110), 3, True, 6),
}
CLASS_NAMES = list(CLASSES)
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _jitter(rng: np.random.Generator, colour: tuple[int, ...], amount: int) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def make_image(seed: int, index: int, label: int) -> bytes:
    """One JPEG of class `label`; a pure function of (seed, index, label)."""
    rng = np.random.default_rng([seed, index])
    background, foreground, sides, filled, blur = CLASSES[CLASS_NAMES[label]]
    w, h = (int(v) for v in rng.integers(400, 601, size=2))
    # Drawn at half size and upscaled: soft edges for a quarter of the drawing cost.
    half_w, half_h = w // 2, h // 2
    y, x = np.mgrid[0:half_h, 0:half_w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    light = 1.0 + 0.18 * (x * np.cos(angle) + y * np.sin(angle)) / max(half_w, half_h)
    pixels = np.asarray(_jitter(rng, background, 20), np.float32) * light[..., None]
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(6, 16)):
        colour, r = _jitter(rng, foreground, 35), rng.uniform(0.05, 0.2) * min(half_w, half_h)
        cx, cy, width = rng.uniform(0, half_w), rng.uniform(0, half_h), int(rng.integers(3, 7))
        fill = colour if filled else None
        if sides == 2:
            draw.line((cx - 2 * r, cy - r, cx + 2 * r, cy + r), fill=colour, width=width)
        elif sides == 0:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=colour, width=width)
        else:
            rotation = rng.uniform(0, 360)
            draw.regular_polygon(
                (cx, cy, r), sides, rotation, fill=fill, outline=colour, width=width
            )
    if blur:
        image = image.filter(ImageFilter.GaussianBlur(blur))
    image = image.resize((w, h), Image.Resampling.BICUBIC)
    # Sensor-like grain makes the JPEG weigh what a photo weighs.
    grain = rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(5.0, 9.0)
    image = Image.fromarray(np.clip(np.asarray(image, np.float32) + grain, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _row_group(job: tuple[int, int, np.ndarray]) -> list[dict]:
    seed, start, labels = job
    return [
        {"bytes": make_image(seed, start + i, int(label)), "path": f"{start + i:06d}.jpg"}
        for i, label in enumerate(labels)
    ]


def make_catalog(out_dir: Path, rows: int, seed: int = 0, row_group_rows: int = 100) -> None:
    """Write the catalog and its manifest.json (written last: it marks the catalog complete)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    # Balanced labels in a seeded order, so any prefix holds every class.
    labels = np.random.default_rng(seed).permutation(np.arange(rows) % len(CLASSES))
    features = {"image": {"_type": "Image"}, "label": {"names": CLASS_NAMES, "_type": "ClassLabel"}}
    metadata = {"huggingface": json.dumps({"info": {"features": features}})}
    schema = pa.schema([("image", IMAGE_TYPE), ("label", pa.int64())], metadata=metadata)
    files = max(1, min(rows // row_group_rows, max(4, rows // 2000)))
    bounds = np.linspace(0, rows, files + 1).astype(int).tolist()
    with multiprocessing.Pool() as pool:
        for number, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            starts = range(lo, hi, row_group_rows)
            jobs = [(seed, s, labels[s : min(s + row_group_rows, hi)]) for s in starts]
            with pq.ParquetWriter(out_dir / f"{number:04d}.parquet", schema) as writer:
                for (_, _, group_labels), group in zip(
                    jobs, pool.imap(_row_group, jobs), strict=True
                ):
                    table = pa.table({"image": pa.array(group, IMAGE_TYPE), "label": group_labels})
                    writer.write_table(table.cast(schema), row_group_size=row_group_rows)
    manifest = {"rows": rows, "seed": seed, "generator": GENERATOR, "class_names": CLASS_NAMES}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def catalog_is_ready(out_dir: Path, rows: int, seed: int = 0) -> bool:
    manifest = out_dir / "manifest.json"
    wanted = {"rows": rows, "seed": seed, "generator": GENERATOR}
    return manifest.exists() and wanted.items() <= json.loads(manifest.read_text()).items()


if __name__ == "__main__":  # python benchmarks/make_catalog.py ROWS OUT_DIR
    make_catalog(Path(sys.argv[2]), int(sys.argv[1]))
