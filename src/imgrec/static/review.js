// Review what the audit found: each suspect label (accept the suggestion, type another class,
// or keep it) and each duplicate group (keep all, or keep one and drop the others). Decisions
// go to the server, which writes the corrections file only when started with --review;
// otherwise the same lists show read-only.
"use strict";

import { $, button, element, itemImage, postJson } from "./common.js";

const PAGE = 20;
const review = { data: null, shown: { suspects: 0, groups: 0 }, onOpen: () => {} };

export async function startReview(data, onOpen) {
  review.data = data;
  review.onOpen = onOpen;
  review.shown = { suspects: 0, groups: 0 };
  $("review").hidden = false;
  $("review-mode").textContent = data.writable
    ? "Decisions are written to the corrections file at once; the next `dvc repro` applies them (prepare) and retrains."
    : `${data.read_only_because} Start it with \`imgrec serve --review\` to record decisions.`;
  const names = element("datalist");
  names.id = "class-names";
  for (const name of data.classes) {
    const option = element("option");
    option.value = name;
    names.append(option);
  }
  $("class-names")?.remove();
  document.body.append(names);
  $("suspects-title").textContent = `Suspect labels (${data.suspect_labels.length})`;
  $("groups-title").textContent = `Duplicate groups (${data.duplicates.length})`;
  $("suspects").replaceChildren();
  $("groups").replaceChildren();
  more("suspects");
  more("groups");
}

function more(kind) {
  const all = kind === "suspects" ? review.data.suspect_labels : review.data.duplicates;
  const start = review.shown[kind];
  const end = Math.min(all.length, start + PAGE);
  const render = kind === "suspects" ? suspectRow : groupRow;
  $(kind).append(...all.slice(start, end).map(render));
  review.shown[kind] = end;
  $(`more-${kind}`).hidden = end >= all.length;
}

function decisionOf(rowId) {
  return review.data.decisions[String(rowId)] || null;
}

function describe(decision) {
  if (!decision) return "undecided";
  return decision.decision === "relabel" ? `relabel to ${decision.new_label}` : decision.decision;
}

// Send decisions ({row_id, decision, new_label}); on success, remember them and redraw `row`.
async function decide(decisions, row, redraw) {
  $("review-error").hidden = true;
  try {
    await postJson("review", { decisions });
    for (const { row_id: rowId, decision, new_label: newLabel } of decisions) {
      if (decision === "undo") delete review.data.decisions[String(rowId)];
      else review.data.decisions[String(rowId)] = { decision, new_label: newLabel || "" };
    }
    row.replaceWith(redraw());
  } catch (error) {
    $("review-error").textContent = error.message;
    $("review-error").hidden = false;
  }
}

function suspectRow(suspect) {
  const row = element("li", undefined, "review-item");
  row.dataset.rowId = suspect.row_id;
  const image = itemImage(suspect.row_id);
  image.addEventListener("click", () => review.onOpen(suspect.row_id));
  row.append(image);
  row.append(element("span", `row ${suspect.row_id}: labelled ${suspect.label}, the audit suggests ${suspect.suggested} (score ${suspect.score.toFixed(3)})`));
  const decided = decisionOf(suspect.row_id);
  row.append(element("span", describe(decided), decided ? "decided" : "undecided"));
  const readOnly = !review.data.writable;
  const redraw = () => suspectRow(suspect);
  const send = (decision, newLabel = "") => decide([{ row_id: suspect.row_id, decision, new_label: newLabel }], row, redraw);
  row.append(button(`accept ${suspect.suggested}`, () => send("relabel", suspect.suggested), readOnly));
  const other = element("input");
  other.setAttribute("list", "class-names");
  other.placeholder = "another class";
  other.setAttribute("aria-label", `another class for row ${suspect.row_id}`);
  other.disabled = readOnly;
  row.append(other);
  row.append(button("relabel", () => { if (other.value) send("relabel", other.value.trim()); }, readOnly));
  row.append(button("keep", () => send("keep"), readOnly));
  if (decided) row.append(button("undo", () => send("undo"), readOnly));
  return row;
}

function groupRow(group) {
  const row = element("li", undefined, "review-item");
  row.dataset.rowIds = group.row_ids.join(",");
  const readOnly = !review.data.writable;
  const redraw = () => groupRow(group);
  const send = (keep) => decide(
    group.row_ids.map((rowId) => ({ row_id: rowId, decision: keep.includes(rowId) ? "keep" : "drop", new_label: "" })),
    row, redraw,
  );
  row.append(element("span", `${group.kind} duplicates (similarity ${group.similarity.toFixed(3)})`));
  const members = element("div", undefined, "members");
  for (const rowId of group.row_ids) {
    const figure = element("figure");
    const image = itemImage(rowId);
    image.addEventListener("click", () => review.onOpen(rowId));
    figure.append(image, element("figcaption", `row ${rowId}: ${describe(decisionOf(rowId))}`));
    figure.append(button("keep only this", () => send([rowId]), readOnly));
    members.append(figure);
  }
  row.append(members);
  row.append(button("keep all", () => send(group.row_ids), readOnly));
  if (group.row_ids.some(decisionOf)) {
    row.append(button("undo", () => decide(group.row_ids.map((rowId) => ({ row_id: rowId, decision: "undo", new_label: "" }))
      , row, redraw), readOnly));
  }
  return row;
}

$("more-suspects").addEventListener("click", () => more("suspects"));
$("more-groups").addEventListener("click", () => more("groups"));
