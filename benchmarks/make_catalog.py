"""Generate a synthetic image catalog at the reference dataset's scale and shape.

The reference (`blackhole-boys/recomendation-system-dataset-v1`) is ~49k rows
of photo-sized JPEGs in Hugging Face parquet files. This writes the same
shape: JPEGs of 400-600 px per side and 50-120 KB each, in several parquet
files of 100-row row groups (the row-group size `datasets` uses for images),
in the Hugging Face Image schema with ClassLabel names in the schema metadata.

Ten classes, each a colour palette plus a shape or texture family, so they are
visibly different; per-image randomness (layout, sizes, lighting, sensor-like
noise) keeps them from being trivial. Output is a pure function of
(rows, seed, files, row_group_rows): every image has its own RNG stream.

    python benchmarks/make_catalog.py --rows 40000 --out benchmarks/data/catalog-40000
"""

import argparse
import io
import itertools
import json
import math
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFilter

CLASS_NAMES = [
    "red_circles",
    "blue_squares",
    "green_stripes",
    "purple_checker",
    "yellow_rings",
    "cyan_triangles",
    "magenta_dots",
    "teal_waves",
    "brown_lines",
    "grey_clouds",
]
# (background, foreground) base colours per class; each image jitters them.
PALETTES = [
    ((250, 220, 200), (200, 40, 30)),
    ((210, 225, 250), (30, 60, 190)),
    ((215, 240, 210), (40, 150, 50)),
    ((235, 215, 245), (120, 40, 150)),
    ((250, 250, 205), (220, 180, 20)),
    ((210, 245, 250), (20, 170, 200)),
    ((250, 215, 240), (210, 40, 170)),
    ((205, 235, 230), (20, 120, 110)),
    ((240, 228, 210), (110, 70, 30)),
    ((225, 225, 225), (110, 110, 110)),
]
IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
MIN_KB, MAX_KB = 50, 120


def _jitter(rng: np.random.Generator, colour: tuple[int, ...], amount: int) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _background(rng: np.random.Generator, w: int, h: int, colour: tuple[int, ...]) -> np.ndarray:
    """A lit, slightly uneven background: a linear gradient plus smooth low-frequency shading."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * math.pi)
    ramp = (x * math.cos(angle) + y * math.sin(angle)) / max(w, h)  # about -1..1
    coarse = rng.normal(0, 1, (6, 6)).astype(np.float32)
    shading = np.asarray(
        Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BICUBIC), np.float32
    )
    light = 1.0 + 0.18 * ramp + 0.06 * shading
    return np.asarray(colour, np.float32)[None, None, :] * light[..., None]


def _draw_class(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, label: int, w: int, h: int, fg: tuple
) -> None:
    s = min(w, h)

    def colour() -> tuple[int, ...]:
        return _jitter(rng, fg, 35)

    if label == 0:  # circles
        for _ in range(rng.integers(3, 9)):
            r = rng.uniform(0.06, 0.2) * s
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour())
    elif label == 1:  # axis-aligned squares
        for _ in range(rng.integers(3, 9)):
            a = rng.uniform(0.08, 0.25) * s
            x0, y0 = rng.uniform(-a / 2, w - a / 2), rng.uniform(-a / 2, h - a / 2)
            draw.rectangle((x0, y0, x0 + a, y0 + a), fill=colour())
    elif label == 2:  # diagonal stripes
        period = rng.uniform(0.06, 0.14) * s
        width = period * rng.uniform(0.3, 0.6)
        tilt = rng.uniform(0.6, 1.4)
        for k in range(-int(2 * (w + h) / period), int(2 * (w + h) / period)):
            x0 = k * period
            draw.line((x0, 0, x0 + tilt * h, h), fill=colour(), width=max(2, int(width)))
    elif label == 3:  # checkerboard
        cell = rng.uniform(0.08, 0.16) * s
        ox, oy = rng.uniform(0, cell, 2)
        for i in range(int(w / cell) + 2):
            for j in range(int(h / cell) + 2):
                if (i + j) % 2 == 0:
                    x0, y0 = i * cell - ox, j * cell - oy
                    draw.rectangle((x0, y0, x0 + cell, y0 + cell), fill=colour())
    elif label == 4:  # concentric rings
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        step = rng.uniform(0.04, 0.08) * s
        for k in range(1, int(s / step)):
            r = k * step
            draw.ellipse(
                (cx - r, cy - r, cx + r, cy + r), outline=colour(), width=max(2, int(step / 2.5))
            )
    elif label == 5:  # triangles
        for _ in range(rng.integers(3, 9)):
            r = rng.uniform(0.08, 0.22) * s
            cx, cy, turn = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 2 * math.pi)
            points = [
                (cx + r * math.cos(turn + t), cy + r * math.sin(turn + t))
                for t in (0, 2 * math.pi / 3, 4 * math.pi / 3)
            ]
            draw.polygon(points, fill=colour())
    elif label == 6:  # grid of small dots
        gap = rng.uniform(0.05, 0.09) * s
        r = gap * rng.uniform(0.15, 0.3)
        for i in range(int(w / gap) + 1):
            for j in range(int(h / gap) + 1):
                cx, cy = (i + 0.5) * gap + rng.normal(0, 2), (j + 0.5) * gap + rng.normal(0, 2)
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour())
    elif label == 7:  # horizontal sine waves
        period = rng.uniform(0.15, 0.35) * w
        amplitude = rng.uniform(0.02, 0.06) * h
        spacing = rng.uniform(0.06, 0.12) * h
        xs = np.arange(0, w + 8, 8)
        for j in range(int(h / spacing) + 2):
            y0 = j * spacing
            phase = rng.uniform(0, 2 * math.pi)
            ys = y0 + amplitude * np.sin(2 * math.pi * xs / period + phase)
            draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=colour(), width=4)
    elif label == 8:  # random thin lines
        for _ in range(rng.integers(15, 35)):
            x0, y0, x1, y1 = (
                rng.uniform(0, w),
                rng.uniform(0, h),
                rng.uniform(0, w),
                rng.uniform(0, h),
            )
            draw.line((x0, y0, x1, y1), fill=colour(), width=int(rng.integers(2, 6)))
    else:  # soft cloud blobs, drawn then blurred by the caller
        for _ in range(rng.integers(6, 14)):
            rx, ry = rng.uniform(0.08, 0.25) * s, rng.uniform(0.05, 0.18) * s
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=colour())


def make_image(seed: int, index: int, label: int) -> bytes:
    """One JPEG of class `label`, 400-600 px per side, 50-120 KB; deterministic in (seed, index)."""
    rng = np.random.default_rng([seed, index])
    w, h = (int(v) for v in rng.integers(400, 601, size=2))
    bg, fg = (_jitter(rng, c, 20) for c in PALETTES[label])
    # Drawn at half size and upscaled: soft, lens-like edges for a quarter of the drawing cost.
    half_w, half_h = w // 2, h // 2
    base = Image.fromarray(np.clip(_background(rng, half_w, half_h, bg), 0, 255).astype(np.uint8))
    _draw_class(ImageDraw.Draw(base), rng, label, half_w, half_h, fg)
    if label == 9:
        base = base.filter(ImageFilter.GaussianBlur(3))
    base = base.resize((w, h), Image.Resampling.BICUBIC)
    # Sensor-like grain makes the JPEG weigh what a photo weighs.
    grain = rng.standard_normal((h, w, 1), dtype=np.float32) * rng.uniform(5.0, 9.0)
    pixels = np.asarray(base, np.float32) + grain
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    quality = 85
    for _ in range(8):  # steer quality until the file lands in [MIN_KB, MAX_KB]
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        size_kb = buffer.tell() / 1024
        if size_kb > MAX_KB and quality > 30:
            quality -= 8
        elif size_kb < MIN_KB and quality < 97:
            quality += 4
        else:
            break
    return buffer.getvalue()


def labels_for(rows: int, seed: int) -> np.ndarray:
    """Balanced labels in a seeded random order, so any prefix holds every class."""
    labels = np.arange(rows) % len(CLASS_NAMES)
    return np.random.default_rng(seed).permutation(labels).astype(np.int64)


def _row_group(args: tuple[int, int, np.ndarray]) -> list[dict]:
    seed, start, labels = args
    return [
        {"bytes": make_image(seed, start + i, int(label)), "path": f"{start + i:06d}.jpg"}
        for i, label in enumerate(labels)
    ]


def hf_metadata() -> dict[str, str]:
    """Schema metadata as the `datasets` library writes it."""
    features = {
        "image": {"_type": "Image"},
        "label": {"names": CLASS_NAMES, "_type": "ClassLabel"},
    }
    return {"huggingface": json.dumps({"info": {"features": features}})}


def make_catalog(
    out_dir: Path,
    rows: int,
    *,
    seed: int = 0,
    files: int | None = None,
    row_group_rows: int = 100,
    workers: int | None = None,
) -> dict:
    """Write `rows` rows into `files` parquet files; return the manifest (also written)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = labels_for(rows, seed)
    schema = pa.schema([("image", IMAGE_TYPE), ("label", pa.int64())], metadata=hf_metadata())
    # About 2,000 rows a file, as in the reference export, and at least four files.
    files = files or max(1, min(rows // row_group_rows, max(4, rows // 2000)))
    bounds = np.linspace(0, rows, files + 1).astype(int)
    jobs = [
        (seed, start, labels[start : min(start + row_group_rows, stop)])
        for lo, stop in itertools.pairwise(bounds)
        for start in range(lo, stop, row_group_rows)
    ]
    started, sizes = time.perf_counter(), []
    with multiprocessing.Pool(workers or os.cpu_count()) as pool:
        results = pool.imap(_row_group, jobs)
        job = 0
        for number, (lo, stop) in enumerate(itertools.pairwise(bounds)):
            path = out_dir / f"{number:04d}.parquet"
            with pq.ParquetWriter(path, schema) as writer:
                for _ in range(lo, stop, row_group_rows):
                    group = next(results)
                    sizes += [len(item["bytes"]) for item in group]
                    group_labels = jobs[job][2]  # imap keeps job order
                    table = pa.table(
                        {"image": pa.array(group, IMAGE_TYPE), "label": group_labels},
                        schema=schema,
                    )
                    writer.write_table(table, row_group_size=row_group_rows)
                    job += 1
            print(f"wrote {path.name}: rows {lo}..{stop - 1}", flush=True)
    sizes_kb = np.asarray(sizes) / 1024
    manifest = {
        "rows": rows,
        "seed": seed,
        "files": len(bounds) - 1,
        "row_group_rows": row_group_rows,
        "class_names": CLASS_NAMES,
        "jpeg_kb": {
            "min": round(float(sizes_kb.min()), 1),
            "mean": round(float(sizes_kb.mean()), 1),
            "max": round(float(sizes_kb.max()), 1),
        },
        "total_mb": round(float(sizes_kb.sum() / 1024), 1),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"generated {rows} images in {time.perf_counter() - started:.0f} s: {manifest}")
    return manifest


def catalog_is_ready(out_dir: Path, rows: int, seed: int) -> bool:
    manifest = out_dir / "manifest.json"
    if not manifest.exists():
        return False
    data = json.loads(manifest.read_text())
    return data["rows"] == rows and data["seed"] == seed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=40_000, help="rows to generate (default 40000)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the parquet files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--files", type=int, help="parquet files (default: one per 2,000 rows)")
    parser.add_argument("--row-group-rows", type=int, default=100)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    args = parser.parse_args()
    make_catalog(
        args.out,
        args.rows,
        seed=args.seed,
        files=args.files,
        row_group_rows=args.row_group_rows,
        workers=args.workers,
    )


if __name__ == "__main__":
    main()
