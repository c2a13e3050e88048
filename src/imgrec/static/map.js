// The catalog as a 2-D map on a canvas: one point per item, zoom (wheel) and pan (drag),
// hover and click through a spatial grid. No library: tens of thousands of points are one
// pass writing pixels into an ImageData, which a 2-D canvas puts on screen at once
// (benchmarks/page_map.py measures it); the few marked points are drawn on top as rings.
"use strict";

// Tableau's 20 colours: distinct on white, in pairs of a dark and a light shade.
export const PALETTE = [
  "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
  "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94",
  "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5",
];
// By flag, in the server's order of `flag_names` (its bit i is flag i); unflagged is pale.
export const FLAG_COLORS = ["#d62728", "#1f77b4", "#ff7f0e", "#9467bd"];
const UNFLAGGED = "#d9d9d9";
const GRID_CELLS = 128; // per side: ~2-3 points per cell at 40,000 items
const HIT_PIXELS = 6; // how near (CSS px) the pointer must be to a point to pick it

function rgba(hex) {
  const value = parseInt(hex.slice(1), 16);
  // ImageData's Uint32 view is little-endian: ABGR.
  return (0xff << 24) | ((value & 0xff) << 16) | (value & 0xff00) | (value >> 16);
}

export class CatalogMap {
  // points: {row_ids, x, y, labels, flags} as parallel arrays (the /api/map answer).
  constructor(canvas, points, { onHover, onOpen } = {}) {
    this.canvas = canvas;
    canvas.catalogMap = this; // how tests and benchmarks/page_map.py reach it
    this.context = canvas.getContext("2d");
    this.onHover = onHover || (() => {});
    this.onOpen = onOpen || (() => {});
    this.count = points.row_ids.length;
    this.rowIds = Int32Array.from(points.row_ids);
    this.x = Float32Array.from(points.x);
    this.y = Float32Array.from(points.y);
    this.labels = Int32Array.from(points.labels);
    this.flags = Uint8Array.from(points.flags);
    this.positionOf = new Map();
    for (let i = 0; i < this.count; i++) this.positionOf.set(this.rowIds[i], i);
    this.colorBy = "label";
    this.marked = []; // positions drawn as rings: an opened item, a query's neighbours
    this.selected = -1;
    this.hovered = -1;
    this.drawn = 0;
    this.bounds();
    this.buildGrid();
    this.listen();
    this.resize();
  }

  // Data bounds, padded so that edge points are not cut in half.
  bounds() {
    let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
    for (let i = 0; i < this.count; i++) {
      x0 = Math.min(x0, this.x[i]); x1 = Math.max(x1, this.x[i]);
      y0 = Math.min(y0, this.y[i]); y1 = Math.max(y1, this.y[i]);
    }
    if (!this.count) [x0, x1, y0, y1] = [0, 1, 0, 1];
    const pad = 0.03 * Math.max(x1 - x0, y1 - y0, 1e-9);
    this.extent = { x0: x0 - pad, y0: y0 - pad, width: x1 - x0 + 2 * pad, height: y1 - y0 + 2 * pad };
  }

  // A uniform grid over the data bounds: cell -> positions, as a CSR pair of arrays.
  buildGrid() {
    const { x0, y0, width, height } = this.extent;
    const cellOf = new Int32Array(this.count);
    const counts = new Int32Array(GRID_CELLS * GRID_CELLS + 1);
    for (let i = 0; i < this.count; i++) {
      const cx = Math.min(GRID_CELLS - 1, Math.floor(((this.x[i] - x0) / width) * GRID_CELLS));
      const cy = Math.min(GRID_CELLS - 1, Math.floor(((this.y[i] - y0) / height) * GRID_CELLS));
      cellOf[i] = cy * GRID_CELLS + cx;
      counts[cellOf[i] + 1]++;
    }
    for (let c = 1; c < counts.length; c++) counts[c] += counts[c - 1];
    const members = new Int32Array(this.count);
    const filled = counts.slice(0, -1);
    for (let i = 0; i < this.count; i++) members[filled[cellOf[i]]++] = i;
    this.grid = { starts: counts, members };
  }

  // The view: screen = (data - extent origin) * scale + offset, in CSS pixels.
  fit() {
    const { width, height } = this.size;
    this.scale = Math.min(width / this.extent.width, height / this.extent.height);
    this.offsetX = (width - this.extent.width * this.scale) / 2;
    this.offsetY = (height - this.extent.height * this.scale) / 2;
  }

  resize() {
    const ratio = window.devicePixelRatio || 1;
    const box = this.canvas.getBoundingClientRect();
    this.size = { width: Math.max(1, box.width), height: Math.max(1, box.height) };
    this.canvas.width = Math.round(this.size.width * ratio);
    this.canvas.height = Math.round(this.size.height * ratio);
    this.ratio = ratio;
    this.fit();
    this.draw();
  }

  // Where item `position` is on screen, in CSS pixels relative to the canvas.
  toScreen(position) {
    return [
      (this.x[position] - this.extent.x0) * this.scale + this.offsetX,
      // y grows upwards on the map, downwards on screen
      (this.extent.height - (this.y[position] - this.extent.y0)) * this.scale + this.offsetY,
    ];
  }

  toData(sx, sy) {
    return [
      (sx - this.offsetX) / this.scale + this.extent.x0,
      this.extent.height - (sy - this.offsetY) / this.scale + this.extent.y0,
    ];
  }

  color(position, colors) {
    if (this.colorBy === "flag") {
      const bits = this.flags[position];
      if (!bits) return colors.unflagged;
      return colors.flags[31 - Math.clz32(bits & -bits)]; // its first flag
    }
    const label = this.labels[position];
    return label < 0 ? colors.unflagged : colors.labels[label % colors.labels.length];
  }

  // Every point into one ImageData (a square of `side` device pixels each), then the rings.
  draw() {
    const { width, height } = this.canvas;
    const image = this.context.createImageData(width, height);
    const pixels = new Uint32Array(image.data.buffer);
    pixels.fill(0xffffffff);
    const colors = { labels: PALETTE.map(rgba), flags: FLAG_COLORS.map(rgba), unflagged: rgba(UNFLAGGED) };
    // Bigger points for a small catalog and when zoomed in; 2 px keeps 40,000 apart.
    const base = this.count > 20000 ? 2 : 3;
    const side = Math.max(2, Math.round(base * this.ratio * Math.min(2.5, Math.sqrt(this.zoom()))));
    const half = side >> 1;
    let drawn = 0;
    // In flag mode the flagged items go last, so the pale unflagged ones never hide them.
    const passes = this.colorBy === "flag" ? [false, true] : [null];
    for (const flaggedPass of passes) {
      for (let i = 0; i < this.count; i++) {
        if (flaggedPass !== null && (this.flags[i] !== 0) !== flaggedPass) continue;
        const [sx, sy] = this.toScreen(i);
        const px = Math.round(sx * this.ratio) - half;
        const py = Math.round(sy * this.ratio) - half;
        if (px + side <= 0 || py + side <= 0 || px >= width || py >= height) continue;
        const color = this.color(i, colors);
        for (let row = Math.max(0, py); row < Math.min(height, py + side); row++) {
          pixels.fill(color, row * width + Math.max(0, px), row * width + Math.min(width, px + side));
        }
        drawn++;
      }
    }
    this.context.putImageData(image, 0, 0);
    this.drawn = drawn;
    this.canvas.dataset.drawn = String(drawn); // for tests: how many points are on screen
    this.drawRings();
  }

  zoom() {
    return this.scale / Math.min(this.size.width / this.extent.width, this.size.height / this.extent.height);
  }

  drawRings() {
    const context = this.context;
    context.save();
    context.scale(this.ratio, this.ratio);
    const ring = (position, radius, color, lineWidth) => {
      const [sx, sy] = this.toScreen(position);
      context.beginPath();
      context.arc(sx, sy, radius, 0, 2 * Math.PI);
      context.strokeStyle = color;
      context.lineWidth = lineWidth;
      context.stroke();
    };
    for (const position of this.marked) ring(position, 5, "#000", 1.5);
    if (this.selected >= 0) ring(this.selected, 8, "#000", 2.5);
    if (this.hovered >= 0) ring(this.hovered, 6, "#1565c0", 2);
    context.restore();
  }

  // The nearest point within HIT_PIXELS of screen point (sx, sy), or -1.
  pick(sx, sy) {
    const [dx, dy] = this.toData(sx, sy);
    const reach = HIT_PIXELS / this.scale; // in data units
    const { x0, y0, width, height } = this.extent;
    const cell = (value, origin, size) => Math.floor(((value - origin) / size) * GRID_CELLS);
    const cx0 = Math.max(0, cell(dx - reach, x0, width));
    const cx1 = Math.min(GRID_CELLS - 1, cell(dx + reach, x0, width));
    const cy0 = Math.max(0, cell(dy - reach, y0, height));
    const cy1 = Math.min(GRID_CELLS - 1, cell(dy + reach, y0, height));
    let best = -1;
    let bestDistance = reach * reach;
    for (let cy = cy0; cy <= cy1; cy++) {
      for (let cx = cx0; cx <= cx1; cx++) {
        const c = cy * GRID_CELLS + cx;
        for (let k = this.grid.starts[c]; k < this.grid.starts[c + 1]; k++) {
          const i = this.grid.members[k];
          const distance = (this.x[i] - dx) ** 2 + (this.y[i] - dy) ** 2;
          if (distance <= bestDistance) [best, bestDistance] = [i, distance];
        }
      }
    }
    return best;
  }

  // Rings around these row ids (those not on the map are left out).
  mark(rowIds, selectedRowId = null) {
    this.marked = rowIds.map((r) => this.positionOf.get(r)).filter((p) => p !== undefined);
    this.selected = selectedRowId === null ? -1 : (this.positionOf.get(selectedRowId) ?? -1);
    this.draw();
  }

  setColorBy(mode) {
    this.colorBy = mode;
    this.draw();
  }

  // Where the item with `rowId` is, in CSS pixels of the page's viewport (for tests).
  clientPosition(rowId) {
    const position = this.positionOf.get(rowId);
    if (position === undefined) return null;
    const box = this.canvas.getBoundingClientRect();
    const [sx, sy] = this.toScreen(position);
    return [box.left + sx, box.top + sy];
  }

  listen() {
    const canvas = this.canvas;
    const local = (event) => {
      const box = canvas.getBoundingClientRect();
      return [event.clientX - box.left, event.clientY - box.top];
    };
    let drag = null;
    let frame = 0;
    const redraw = () => {
      if (!frame) frame = requestAnimationFrame(() => { frame = 0; this.draw(); });
    };
    canvas.addEventListener("wheel", (event) => {
      event.preventDefault();
      const [sx, sy] = local(event);
      const factor = Math.exp(-event.deltaY * 0.0015);
      const zoom = Math.min(200, Math.max(0.5, this.zoom() * factor)) / this.zoom();
      this.offsetX = sx - (sx - this.offsetX) * zoom; // the point under the pointer stays put
      this.offsetY = sy - (sy - this.offsetY) * zoom;
      this.scale *= zoom;
      this.hover(sx, sy, event); // another point may be under the pointer now
      redraw();
    }, { passive: false });
    canvas.addEventListener("pointerdown", (event) => {
      const [sx, sy] = local(event);
      drag = { sx, sy, offsetX: this.offsetX, offsetY: this.offsetY, moved: false };
      canvas.setPointerCapture(event.pointerId);
    });
    canvas.addEventListener("pointermove", (event) => {
      const [sx, sy] = local(event);
      if (drag) {
        if (Math.abs(sx - drag.sx) + Math.abs(sy - drag.sy) > 3) drag.moved = true;
        if (drag.moved) {
          this.offsetX = drag.offsetX + sx - drag.sx;
          this.offsetY = drag.offsetY + sy - drag.sy;
          redraw();
          return;
        }
      }
      if (this.hover(sx, sy, event)) redraw();
    });
    canvas.addEventListener("pointerup", (event) => {
      const [sx, sy] = local(event);
      const click = drag && !drag.moved;
      drag = null;
      if (!click) return;
      const position = this.pick(sx, sy);
      if (position >= 0) this.onOpen(this.rowIds[position]);
    });
    canvas.addEventListener("pointerleave", () => {
      if (this.hovered >= 0) {
        this.hovered = -1;
        redraw();
      }
      this.onHover(null);
    });
    canvas.addEventListener("dblclick", () => { this.fit(); redraw(); });
    new ResizeObserver(() => this.resize()).observe(canvas);
  }

  // Whether the point under (sx, sy) changed; tells onHover when it did.
  hover(sx, sy, event) {
    const hovered = this.pick(sx, sy);
    if (hovered === this.hovered) return false;
    this.hovered = hovered;
    this.onHover(hovered < 0 ? null : this.item(hovered), event.clientX, event.clientY);
    return true;
  }

  item(position) {
    return { rowId: this.rowIds[position], label: this.labels[position], flags: this.flags[position] };
  }
}
