// The page over imgrec's API: browse the catalog, open an item, search with an image.
// Everything shown comes from the data, so it is set as text (textContent), never as HTML.
"use strict";

const PAGE_SIZE = 48;
const state = { token: sessionStorage.getItem("imgrec-token") || "", offset: 0, queryUrl: null };
const $ = (id) => document.getElementById(id);

function headers(extra = {}) {
  return state.token ? { ...extra, Authorization: `Bearer ${state.token}` } : extra;
}

// JSON from the API; an error carries the server's one-sentence `detail`.
async function api(path, options = {}) {
  const response = await fetch(`api/${path}`, { ...options, headers: headers(options.headers) });
  if (response.status === 401) {
    $("token-form").hidden = false;
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(body.detail || `the server answered ${response.status}`);
  }
  return body;
}

// Images come through fetch, so that the token goes with them; a few hundred stay cached.
const imageUrls = new Map();
async function itemImageUrl(rowId) {
  if (!imageUrls.has(rowId)) {
    const response = await fetch(`api/items/${rowId}/image`, { headers: headers() });
    if (!response.ok) throw new Error(`no image for row ${rowId}`);
    imageUrls.set(rowId, URL.createObjectURL(await response.blob()));
    if (imageUrls.size > 600) {
      const [oldest, url] = imageUrls.entries().next().value;
      URL.revokeObjectURL(url);
      imageUrls.delete(oldest);
    }
  }
  return imageUrls.get(rowId);
}

function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

// One catalog item as a card: image, row id, label, and a score or audit badges.
function card(entry) {
  const item = element("li", undefined, "card");
  item.tabIndex = 0;
  item.dataset.rowId = entry.row_id;
  const image = element("img");
  image.alt = `row ${entry.row_id}`;
  itemImageUrl(entry.row_id).then((url) => { image.src = url; }, () => {});
  item.append(image);
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

async function showItem(rowId) {
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
    $("item").scrollIntoView({ block: "start" });
  } catch (error) {
    $("status").textContent = error.message;
  }
}

async function search(file) {
  const topK = Math.max(1, parseInt($("top-k").value, 10) || 10);
  $("query-error").hidden = true;
  $("query").hidden = false;
  if (state.queryUrl) URL.revokeObjectURL(state.queryUrl);
  state.queryUrl = URL.createObjectURL(file);
  $("query-image").src = state.queryUrl;
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
  } catch (error) {
    $("query").hidden = true;
    $("results").replaceChildren();
    $("query-error").textContent = error.message;
    $("query-error").hidden = false;
  }
}

async function browse() {
  const filters = new URLSearchParams({ offset: state.offset, limit: PAGE_SIZE });
  if ($("label").value) filters.set("label", $("label").value);
  if ($("flag").value) filters.set("flag", $("flag").value);
  try {
    const page = await api(`items?${filters}`);
    const pages = Math.max(1, Math.ceil(page.total / PAGE_SIZE));
    $("page").textContent = `page ${Math.floor(state.offset / PAGE_SIZE) + 1} of ${pages} (${page.total} items)`;
    $("prev").disabled = state.offset === 0;
    $("next").disabled = state.offset + PAGE_SIZE >= page.total;
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
    await browse();
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
  $(id).addEventListener("change", () => { state.offset = 0; browse(); });
}
$("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - PAGE_SIZE); browse(); });
$("next").addEventListener("click", () => { state.offset += PAGE_SIZE; browse(); });
start();
