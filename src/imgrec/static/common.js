// What every part of the page shares: the token, JSON from the API, item images, elements.
// Everything shown comes from the data, so it is set as text (textContent), never as HTML.
"use strict";

export const state = { token: sessionStorage.getItem("imgrec-token") || "" };
export const $ = (id) => document.getElementById(id);

export function headers(extra = {}) {
  return state.token ? { ...extra, Authorization: `Bearer ${state.token}` } : extra;
}

// JSON from the API; an error carries the server's one-sentence `detail` and its status.
export async function api(path, options = {}) {
  const response = await fetch(`api/${path}`, { ...options, headers: headers(options.headers) });
  if (response.status === 401) {
    $("token-form").hidden = false;
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.detail || `the server answered ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

export function postJson(path, data) {
  return api(path, { method: "POST", body: JSON.stringify(data), headers: { "Content-Type": "application/json" } });
}

// Images come through fetch, so that the token goes with them; a few hundred stay cached.
const imageUrls = new Map();
export async function itemImageUrl(rowId) {
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

export function element(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined) node.textContent = text;
  if (className) node.className = className;
  return node;
}

export function button(text, onClick, disabled = false) {
  const node = element("button", text);
  node.type = "button";
  node.disabled = disabled;
  node.addEventListener("click", onClick);
  return node;
}

// An <img> of a catalog item, filled in when its image arrives.
export function itemImage(rowId, alt = `row ${rowId}`) {
  const image = element("img");
  image.alt = alt;
  itemImageUrl(rowId).then((url) => { image.src = url; }, () => {});
  return image;
}
