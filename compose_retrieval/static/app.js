// The search page of `compose-retrieval serve`: plain JavaScript, no framework, no build step.
// Every string from the server or the user reaches the page through textContent or attributes, never as HTML.
"use strict";

const state = { info: null, path: null, file: null, objectUrl: null };
const $ = (id) => document.getElementById(id);

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function fetchJSON(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new Error("the server could not be reached (" + err.message + ")");
  }
  let body = null;
  try {
    body = await response.json();
  } catch (err) {
    body = null;
  }
  if (!response.ok) {
    const why = body && body.error ? body.error : (body && body.detail ? JSON.stringify(body.detail) : response.statusText);
    throw new Error(why + " (HTTP " + response.status + ")");
  }
  return body;
}

function formatBytes(n) {
  return n >= 1048576 ? (n / 1048576).toFixed(1) + " MB" : Math.ceil(n / 1024) + " KB";
}

async function loadInfo() {
  const info = await fetchJSON("/api/info");
  state.info = info;
  const model = info.model || {};
  const name = model.name || model.path || (model.sha256 ? "sha256 " + model.sha256.slice(0, 12) : "unknown model");
  let line = info.size + " images, model " + name;
  if (info.backend) line += ", " + info.backend + " search";
  if (info.skipped) line += ", " + info.skipped + " unreadable skipped";
  $("info").textContent = line;
  $("k").value = info.default_k;
  if (!info.text_alone) $("text").placeholder = "make the red circle blue (needs an image)";
}

async function loadSamples() {
  const data = await fetchJSON("/api/sample?n=18");
  const group = $("samples");
  group.replaceChildren();
  for (const sample of data.samples) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sample";
    button.dataset.path = sample.path;
    button.setAttribute("aria-pressed", "false");
    button.setAttribute("aria-label", "Pick " + sample.path);
    button.title = sample.path;
    const img = document.createElement("img");
    img.src = sample.url;
    img.alt = "";
    img.loading = "lazy";
    button.append(img);
    button.addEventListener("click", () => pickPath(sample.path, sample.url));
    group.append(button);
  }
}

function markPicked(path) {
  for (const button of $("samples").querySelectorAll(".sample")) {
    button.setAttribute("aria-pressed", String(button.dataset.path === path));
  }
}

function showChosen(url, caption) {
  $("chosen-image").src = url;
  $("chosen-caption").textContent = caption;
  $("chosen").hidden = false;
}

function releaseObjectUrl() {
  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = null;
}

function pickPath(path, url) {
  releaseObjectUrl();
  state.path = path;
  state.file = null;
  $("image-file").value = "";
  markPicked(path);
  showChosen(url, path);
  showError("");
}

function pickFile(file) {
  releaseObjectUrl();
  state.path = null;
  state.file = null;
  markPicked(null);
  if (!file) {
    $("chosen").hidden = true;
    return;
  }
  const limit = state.info ? state.info.max_upload_bytes : Infinity;
  if (file.size > limit) {
    $("image-file").value = "";
    $("chosen").hidden = true;
    showError(file.name + " is " + formatBytes(file.size) + ", larger than the server accepts (" + formatBytes(limit) + ")");
    return;
  }
  state.file = file;
  state.objectUrl = URL.createObjectURL(file);
  showChosen(state.objectUrl, file.name + " (uploaded)");
  showError("");
}

function clearImage() {
  releaseObjectUrl();
  state.path = null;
  state.file = null;
  $("image-file").value = "";
  markPicked(null);
  $("chosen").hidden = true;
}

function renderResults(data) {
  const list = $("results");
  list.replaceChildren();
  for (const item of data.results) {
    const li = document.createElement("li");
    li.className = "result";
    li.dataset.rank = item.rank;
    li.dataset.path = item.path;
    li.dataset.score = item.score;
    const img = document.createElement("img");
    img.src = item.url;
    img.alt = "Result " + item.rank + ": " + item.path;
    const meta = document.createElement("div");
    meta.className = "meta";
    const rank = document.createElement("span");
    rank.className = "rank";
    rank.textContent = "#" + item.rank;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = Number(item.score).toFixed(4);
    score.title = "score (cosine similarity)";
    meta.append(rank, score);
    const path = document.createElement("span");
    path.className = "path";
    path.textContent = item.path;
    li.append(img, meta, path);
    list.append(li);
  }
  const query = data.query || {};
  const what = [];
  if (query.path) what.push(query.path);
  if (query.upload) what.push(query.upload + " (uploaded)");
  if (query.text) what.push("\u201c" + query.text + "\u201d");
  let status = data.results.length + " results for " + (what.join(" + ") || "the query");
  if (query.excluded) status += " (the query image itself left out)";
  $("status").textContent = status;
  list.dataset.state = "done";
}

async function search(event) {
  event.preventDefault();
  showError("");
  const text = $("text").value.trim();
  if (!state.path && !state.file && !text) {
    showError("Pick or upload an image, or type a text, first.");
    return;
  }
  const form = new FormData();
  if (state.file) form.append("image", state.file, state.file.name);
  else if (state.path) form.append("path", state.path);
  form.append("text", text);
  form.append("k", $("k").value);
  const button = $("search-button");
  button.disabled = true;
  $("results").dataset.state = "searching";
  $("results-section").setAttribute("aria-busy", "true");
  $("status").textContent = "Searching\u2026";
  try {
    renderResults(await fetchJSON("/api/search", { method: "POST", body: form }));
  } catch (err) {
    $("results").dataset.state = "error";
    $("status").textContent = "";
    showError(err.message);
  } finally {
    button.disabled = false;
    $("results-section").removeAttribute("aria-busy");
  }
}

// A link can carry a query: /?path=a/b.png&text=make+it+red&k=10 picks the indexed image and fills the fields
// (the server checks the path when the search is sent).
function applyLinkQuery() {
  const params = new URLSearchParams(window.location.search);
  const path = params.get("path");
  if (path) pickPath(path, "/files/" + path.split("/").map(encodeURIComponent).join("/"));
  if (params.get("text") !== null) $("text").value = params.get("text");
  if (params.get("k")) $("k").value = params.get("k");
}

document.addEventListener("DOMContentLoaded", () => {
  $("query-form").addEventListener("submit", search);
  $("image-file").addEventListener("change", (event) => pickFile(event.target.files[0]));
  $("clear-image").addEventListener("click", clearImage);
  loadInfo().then(loadSamples).then(applyLinkQuery).catch((err) => showError(err.message));
});
