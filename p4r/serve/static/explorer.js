// p4r explorer: a user's history, candidates, and the reranked list with winning personas.
// Plain DOM and fetch against the same origin's /v1 API; data is shown with textContent only.
"use strict";

const $ = (id) => document.getElementById(id);
const titles = new Map();  // item id -> title, from /v1/items

// The key, when the server needs one: kept in this browser's local storage (set it with
// localStorage.setItem("p4r-api-key", KEY) until the page has a field for it).
function keyHeaders() {
  const key = window.localStorage && localStorage.getItem("p4r-api-key");
  return key ? { "api-key": key } : {};
}

// Errors answer {"error": {"code", "message", ...}}; the message is the CLI's line.
async function api(path, options = {}) {
  const headers = { ...keyHeaders(), ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error((body.error && body.error.message) || `HTTP ${response.status}`);
  }
  return body;
}

function showError(error) {
  const box = $("error");
  box.textContent = error ? `Error: ${error.message || error}` : "";
  box.hidden = !error;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function itemLabel(itemId) {
  const title = titles.get(itemId);
  return title ? `${title} (${itemId})` : itemId;
}

async function loadStatus() {
  const ready = await fetch("/readyz").then((r) => r.json());
  $("status").textContent = ready.ready
    ? `dataset ${ready.dataset} · version ${ready.version}`
    : `dataset ${ready.dataset} · not ready: ${ready.error || "loading"}`;
  return ready.ready;
}

async function loadPickers() {
  const [{ users }, { items }] = await Promise.all([api("/v1/users?limit=500"),
                                                    api("/v1/items?limit=2000")]);
  const list = $("user-list");
  list.replaceChildren(...users.map((u) => { const o = el("option"); o.value = u; return o; }));
  const pick = $("item-pick");
  for (const item of items) {
    titles.set(item.item_id, item.title);
    const option = el("option", itemLabel(item.item_id));
    option.value = item.item_id;
    pick.append(option);
  }
}

async function showHistory(event) {
  if (event) event.preventDefault();
  showError(null);
  const userId = $("user-id").value.trim();
  const history = $("history");
  history.replaceChildren();
  if (!userId) return;
  try {
    const profile = await api(`/v1/users/${encodeURIComponent(userId)}`);
    for (const entry of profile.interactions) {
      const li = el("li", itemLabel(entry.item_id));
      const when = new Date(entry.timestamp * 1000);
      li.append(" ", el("span", isNaN(when) ? "" : when.toISOString().slice(0, 10), "muted"));
      history.append(li);
    }
    if (!profile.interactions.length) history.append(el("li", "no interactions", "muted"));
    $("history-note").textContent = profile.live
      ? `${profile.live} of them arrived after version ${profile.version} was built` : "";
  } catch (error) {
    showError(error);
  }
}

function candidateIds() {
  return $("candidates").value.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

function setCandidates(ids) {
  $("candidates").value = [...new Set(ids)].join("\n");
}

function addPicked() {
  const value = $("item-pick").value;
  if (value) setCandidates([...candidateIds(), value]);
}

function randomItems() {
  const all = [...titles.keys()];
  for (let i = all.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [all[i], all[j]] = [all[j], all[i]];
  }
  setCandidates(all.slice(0, 10));
}

function personaCell(persona) {
  const cell = el("td");
  if (!persona) return cell;
  cell.append(el("div", persona.name, "persona-name"),
              el("div", persona.description, "persona-description"),
              el("div", persona.rationale, "persona-rationale"));
  return cell;
}

function showResults(items) {
  const body = $("results").querySelector("tbody");
  body.replaceChildren();
  items.forEach((item, index) => {
    const row = el("tr");
    row.dataset.itemId = item.item_id;
    const why = el("td");
    why.append(el("span", item.explanation, `badge ${item.explanation}`));
    row.append(el("td", index + 1), el("td", itemLabel(item.item_id)),
               el("td", item.score === null ? "–" : item.score.toFixed(4), "score"),
               why, personaCell(item.persona));
    body.append(row);
  });
}

async function rerank() {
  showError(null);
  const userId = $("user-id").value.trim();
  const request = { user_id: userId, candidates: candidateIds(),
                    allow_unknown: $("allow-unknown").checked };
  const k = parseInt($("k").value, 10);
  if (k > 0) request.k = k;
  try {
    if (!userId) throw new Error("pick or type a user id first");
    if (!request.candidates.length) throw new Error("paste or pick some candidates first");
    const answer = await api("/v1/rerank", {
      method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify(request),
    });
    showResults(answer.items);
  } catch (error) {
    showResults([]);
    showError(error);
  }
}

async function start() {
  $("user-form").addEventListener("submit", showHistory);
  $("add-item").addEventListener("click", addPicked);
  $("random-items").addEventListener("click", randomItems);
  $("clear-items").addEventListener("click", () => setCandidates([]));
  $("rerank").addEventListener("click", rerank);
  try {
    if (await loadStatus()) await loadPickers();
  } catch (error) {
    showError(error);
  }
  document.body.dataset.loaded = "true";
}

start();
