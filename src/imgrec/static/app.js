// The page over imgrec's API: the catalog as a map, review of what the audit found, browse
// the catalog, open an item, search with an image.
// Everything shown comes from the data, so it is set as text (textContent), never as HTML.
"use strict";

import { $, api, element, itemImage, itemImageUrl, state } from "./common.js";
import { CatalogMap, FLAG_COLORS, PALETTE } from "./map.js";
import { startReview } from "./review.js";

const PAGE_SIZE = 48;
const view = { offset: 0, queryUrl: null, map: null, points: null };

// One catalog item as a card: image, row id, label, and a score or audit badges.
function card(entry) {
  const item = element("li", undefined, "card");
  item.tabIndex = 0;
  item.dataset.rowId = entry.row_id;
  item.append(itemImage(entry.row_id));
  const rank = entry.rank !== undefined ? `#${entry.rank} ` : "";
  item.append(element("div", `${rank}row ${entry.row_id}`));
  item.append(element("div", `label ${entry.label ?? "none"}`));
  if (entry.score !== undefined) item.append(element("div", `score ${entry.score.toFixed(4)}`, "score"));
  if (entry.flags && entry.flags.length) item.append(element("div", entry.flags.join(", "), "badges"));
  const open = () => showItem(entry.row_id);
  item.addEventListener("click", open);
  item.addEventListener("keydown", (event) => { if (event.key === "Enter") open(); });
  return item;
}

function fill(list, entries) {
  list.replaceChildren(...entries.map(card));
}

// `scroll`: how to bring the item into view; from the map, "nearest" keeps the map in sight.
async function showItem(rowId, scroll = "start") {
  try {
    const item = await api(`items/${rowId}`);
    $("item").hidden = false;
    $("item-title").textContent = `Row ${item.row_id}`;
    $("item-image").src = await itemImageUrl(item.row_id);
    const facts = [["label", item.label ?? "none"], ["split", item.split ?? "none (a catalog apart from the training data)"]];
    if (item.audit) {
      const audit = item.audit;
      if (audit.suspect_label) {
        facts.push(["suspect label", `maybe ${audit.suspect_label.suggested} (score ${audit.suspect_label.score.toFixed(3)})`]);
      }
      if (audit.duplicates.length) facts.push([`${audit.duplicate_kind} duplicate of`, audit.duplicates.join(", ")]);
      if (audit.leaks_with.length) facts.push(["alike across the split", audit.leaks_with.join(", ")]);
      if (audit.outlier_score !== null) facts.push(["outlier score", audit.outlier_score.toFixed(3)]);
    }
    $("item-facts").replaceChildren(...facts.flatMap(([name, value]) => [element("dt", name), element("dd", String(value))]));
    fill($("neighbors"), item.neighbors);
    view.map?.mark(item.neighbors.map((n) => n.row_id), item.row_id);
    $("item").scrollIntoView({ block: scroll });
  } catch (error) {
    $("status").textContent = error.message;
  }
}

async function search(file) {
  const topK = Math.max(1, parseInt($("top-k").value, 10) || 10);
  $("query-error").hidden = true;
  // Nothing of the previous answer may stay beside the new image, whatever this one gives.
  $("query-class").textContent = "searching…";
  $("no-close-match").hidden = true;
  $("duplicate-of").hidden = true;
  $("results").replaceChildren();
  $("query").hidden = false;
  if (view.queryUrl) URL.revokeObjectURL(view.queryUrl);
  view.queryUrl = URL.createObjectURL(file);
  $("query-image").src = view.queryUrl;
  const upload = { method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" } };
  try {
    const [answer, prediction] = await Promise.all([
      api(`recommend?top_k=${topK}`, upload),
      api("classify", upload),
    ]);
    $("query-class").textContent = `classified as ${prediction.label} (probability ${prediction.probability.toFixed(4)}); top ${answer.results.length} of the catalog:`;
    $("no-close-match").hidden = !answer.no_close_match;
    const copies = answer.duplicate_of || [];
    $("duplicate-of").hidden = copies.length === 0;
    $("duplicate-of").textContent = `A copy of catalog item(s) ${copies.join(", ")}, left out of the results.`;
    fill($("results"), answer.results);
    view.map?.mark(answer.results.map((r) => r.row_id));
  } catch (error) {
    $("query").hidden = true;
    $("results").replaceChildren();
    $("query-error").textContent = error.message;
    $("query-error").hidden = false;
  }
}

async function browse() {
  const filters = new URLSearchParams({ offset: view.offset, limit: PAGE_SIZE });
  if ($("label").value) filters.set("label", $("label").value);
  if ($("flag").value) filters.set("flag", $("flag").value);
  try {
    const page = await api(`items?${filters}`);
    const pages = Math.max(1, Math.ceil(page.total / PAGE_SIZE));
    $("page").textContent = `page ${Math.floor(view.offset / PAGE_SIZE) + 1} of ${pages} (${page.total} items)`;
    $("prev").disabled = view.offset === 0;
    $("next").disabled = view.offset + PAGE_SIZE >= page.total;
    fill($("catalog"), page.items);
  } catch (error) {
    $("status").textContent = error.message;
  }
}

function options(select, values) {
  for (const value of values) {
    const option = element("option", value);
    option.value = value;
    select.append(option);
  }
}

// The map: every catalog item a point; hover shows its image, a click opens it.
async function showMap(health) {
  $("map").hidden = false;
  let points;
  try {
    points = await api("map");
  } catch (error) {
    $("map-note").textContent = error.message;
    $("map-canvas").parentElement.hidden = true;
    return;
  }
  view.points = points;
  $("map-canvas").parentElement.hidden = false;
  $("map-note").textContent = `${points.row_ids.length} items; rings mark the opened item's or the searched image's neighbours.`;
  $("color-by").querySelector("option[value=flag]").disabled = !health.audit;
  view.map = new CatalogMap($("map-canvas"), points, { onHover: hover, onOpen: (rowId) => showItem(rowId, "nearest") });
  legend();
}

function legend() {
  const byFlag = view.map.colorBy === "flag";
  const names = byFlag ? ["none", ...view.points.flag_names] : view.points.classes;
  const colors = byFlag ? ["#d9d9d9", ...FLAG_COLORS] : names.map((_, i) => PALETTE[i % PALETTE.length]);
  $("legend").replaceChildren(...names.map((name, i) => {
    const entry = element("li", name);
    const swatch = element("span", undefined, "swatch");
    swatch.style.background = colors[i];
    entry.prepend(swatch);
    return entry;
  }));
}

let hovered = null;
async function hover(item, clientX, clientY) {
  hovered = item ? item.rowId : null;
  const tip = $("map-tip");
  if (!item) {
    tip.hidden = true;
    return;
  }
  const label = item.label < 0 ? "none" : view.points.classes[item.label];
  const flags = view.points.flag_names.filter((_, bit) => item.flags & (1 << bit));
  $("map-tip-text").textContent = `row ${item.rowId} · ${label}${flags.length ? ` · ${flags.join(", ")}` : ""}`;
  tip.style.left = `${clientX + 14}px`;
  tip.style.top = `${clientY + 14}px`;
  tip.hidden = false;
  $("map-tip-image").removeAttribute("src"); // never the previous item's image beside this one
  const url = await itemImageUrl(item.rowId).catch(() => "");
  if (hovered === item.rowId) $("map-tip-image").src = url;
}

async function showReview(health) {
  if (!health.audit) return; // nothing was found, so nothing to review
  try {
    startReview(await api("review"), showItem);
  } catch (error) {
    $("review").hidden = false;
    $("review-mode").textContent = error.message;
  }
}

async function start() {
  try {
    const health = await api("health");
    $("token-form").hidden = true;
    $("status").textContent = `${health.catalog_size} catalog items, model ${health.model.file} (md5 ${health.model.md5})`;
    $("label").replaceChildren($("label").firstElementChild);
    options($("label"), health.classes);
    $("flag-filter").hidden = !health.audit;
    $("flag").replaceChildren($("flag").firstElementChild);
    options($("flag"), health.flags);
    await Promise.all([browse(), showMap(health), showReview(health)]);
  } catch (error) {
    $("status").textContent = error.message;
  }
}

$("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("token").value;
  sessionStorage.setItem("imgrec-token", state.token);
  start();
});
$("file").addEventListener("change", () => { if ($("file").files.length) search($("file").files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) search(event.dataTransfer.files[0]);
});
for (const id of ["label", "flag"]) {
  $(id).addEventListener("change", () => { view.offset = 0; browse(); });
}
$("color-by").addEventListener("change", () => {
  if (!view.map) return;
  view.map.setColorBy($("color-by").value);
  legend();
});
$("prev").addEventListener("click", () => { view.offset = Math.max(0, view.offset - PAGE_SIZE); browse(); });
$("next").addEventListener("click", () => { view.offset += PAGE_SIZE; browse(); });
start();
