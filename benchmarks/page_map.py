"""What the page's catalog map costs in headless Chromium at 40,000 points (issue 32).

The map's JSON is made by the server's own function (`review_api.map_points`) over fakes of
the served catalog: --points items in --classes Gaussian clusters, the shape a 2-D
projection of a trained model's embeddings takes, about 5% of them flagged. The page's own
`static/map.js` draws them in a real headless Chromium (software raster, as on a machine
without a GPU), inside a canvas of the page's size. Side by side, in the same page: the
map's pixel pass (ImageData) against one `fillRect` per point, the way most canvas
scatter plots draw; and its hit test (a uniform grid) against a scan of every point.
Prints one Markdown table; benchmarks/RESULTS.md carries the reading.

    python benchmarks/page_map.py [--points 40000] [--rounds 15]
"""

import imgrec  # noqa: F401, I001 - first: it applies IMGREC_KERNELS before numpy and torch load

import argparse
import functools
import http.server
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from imgrec.server.page import STATIC
from imgrec.recommender.audit_report import FLAGS
from imgrec.recommender.map_coordinates import MapCoordinates, normalized, save_coordinates
from imgrec.server.review import map_points

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from chromium import CHROMIUM, Chromium  # noqa: E402 - the tests' DevTools driver

# Runs in the page: builds the map from /map.json, then times each side `rounds` times.
MEASURE = """
(async () => {
  const { CatalogMap, PALETTE } = await import('./map.js');
  const canvas = document.getElementById('map-canvas');
  const t0 = performance.now();
  const text = await (await fetch('map.json')).text();
  const tParse = performance.now();
  const points = JSON.parse(text);
  const t1 = performance.now();
  const map = new CatalogMap(canvas, points);
  const t2 = performance.now();
  const rounds = ROUNDS;
  const pixelPass = [], fillRects = [], grid = [], scan = [];
  const context = canvas.getContext('2d');
  for (let r = 0; r < rounds; r++) {
    let s = performance.now();
    map.draw();
    context.getImageData(0, 0, 1, 1);
    pixelPass.push(performance.now() - s);
    s = performance.now();
    context.fillStyle = '#fff'; context.fillRect(0, 0, canvas.width, canvas.height);
    for (let i = 0; i < map.count; i++) {
      const [x, y] = map.toScreen(i);
      context.fillStyle = PALETTE[map.labels[i] % PALETTE.length];
      context.fillRect(x - 1, y - 1, 2, 2);
    }
    context.getImageData(0, 0, 1, 1);  // waits for the raster, as the pixel pass does
    fillRects.push(performance.now() - s);
  }
  const probes = Array.from({ length: 1000 }, (_, k) => map.toScreen((k * 7919) % map.count));
  for (let r = 0; r < rounds; r++) {
    let s = performance.now();
    for (const [x, y] of probes) map.pick(x, y);
    grid.push((performance.now() - s) / probes.length);
    s = performance.now();
    for (const [x, y] of probes) {
      const [dx, dy] = map.toData(x, y); let best = -1, bestDistance = Infinity;
      for (let i = 0; i < map.count; i++) {
        const d = (map.x[i] - dx) ** 2 + (map.y[i] - dy) ** 2;
        if (d < bestDistance) { best = i; bestDistance = d; }
      }
    }
    scan.push((performance.now() - s) / probes.length);
  }
  return { fetch: tParse - t0, parse: t1 - tParse, build: t2 - t1, drawn: map.drawn,
           canvas: [canvas.width, canvas.height], pixelPass, fillRects, grid, scan };
})()
"""

PAGE = """<!doctype html><meta charset="utf-8"><title>map</title>
<style>body{margin:0} #map-canvas{width:1230px;height:560px;display:block}</style>
<canvas id="map-canvas"></canvas>"""


def map_json(points: int, classes: int, seed: int, folder: Path) -> tuple[bytes, float]:
    """The /api/map answer for a catalog of `points` items, by the server's own function,
    and the seconds it took to make and encode (the server does it once per catalog)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, points)
    centres = rng.normal(0, 8, (classes, 2))
    xy = (centres[labels] + rng.normal(0, 1.2, (points, 2))).astype(np.float32)
    row_ids = np.arange(points, dtype=np.int64)
    save_coordinates(folder / "catalog_map.csv", MapCoordinates(row_ids, normalized(xy)))
    flagged = rng.choice(points, points // 20, replace=False)
    flags = {int(r): [FLAGS[k % len(FLAGS)]] for k, r in enumerate(flagged)}
    catalog = SimpleNamespace(
        row_ids=row_ids, labels=labels, class_names=[str(c) for c in range(classes)]
    )
    served = SimpleNamespace(recommender=SimpleNamespace(catalog=catalog), flags=flags)
    start = time.perf_counter()
    answer, problem = map_points(folder / "catalog_map.csv", served)
    body = json.dumps(answer, separators=(",", ":")).encode()  # as the route encodes it
    seconds = time.perf_counter() - start
    assert problem is None, problem
    return body, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=40_000)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--screenshot", type=Path, help="also save the drawn map as a PNG")
    args = parser.parse_args()
    if CHROMIUM is None:
        sys.exit("error: needs Chromium (chromium or chromium-browser on PATH).")

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        site = work / "site"
        site.mkdir()
        for name in ("map.js",):
            shutil.copy(STATIC / name, site / name)
        (site / "index.html").write_text(PAGE)
        payload, encode_seconds = map_json(args.points, args.classes, 0, work)
        (site / "map.json").write_bytes(payload)
        handler = functools.partial(QuietHandler, directory=str(site))
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        browser = Chromium(work / "profile")
        try:
            page = browser.open(f"http://127.0.0.1:{httpd.server_port}/")
            browser.wait_for(page, "document.getElementById('map-canvas') !== null", "the page")
            found = browser.evaluate(page, MEASURE.replace("ROUNDS", str(args.rounds)))
            if args.screenshot:
                browser.screenshot(page, args.screenshot)
        finally:
            browser.close()
            httpd.shutdown()

    median = statistics.median
    draw, fill_rects = median(found["pixelPass"]), median(found["fillRects"])
    grid, scan = median(found["grid"]), median(found["scan"])
    rows = [
        ("/api/map JSON, MB", f"{len(payload) / 2**20:.2f}", "", ""),
        ("server: read the map file, make and encode the answer, ms",
         f"{1000 * encode_seconds:.0f}", "", ""),
        ("fetch from a local server, ms", f"{found['fetch']:.1f}", "", ""),
        ("JSON.parse, ms", f"{found['parse']:.1f}", "", ""),
        ("build (typed arrays, grid, first draw), ms", f"{found['build']:.1f}", "", ""),
        ("one draw of every point, ms (median)", f"{draw:.2f}", f"{fill_rects:.2f}",
         f"{draw / fill_rects:.3f}"),
        ("one hit test, µs (median)", f"{1000 * grid:.2f}", f"{1000 * scan:.2f}",
         f"{grid / scan:.4f}"),
    ]  # fmt: skip
    width, height = found["canvas"]
    print(f"## The page's map: {found['drawn']:,} of {args.points:,} points drawn on a "
          f"{width} x {height} canvas, {args.rounds} rounds\n")  # fmt: skip
    print("| metric | map.js | one fillRect per point / a scan | ratio |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


if __name__ == "__main__":
    main()
