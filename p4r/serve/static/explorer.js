// p4r explorer: a user's history, candidates, and the reranked list with the persona that
// matches the user best, all shown by item titles and summaries. Plain DOM and fetch against
// the same origin's /v1 API; everything the server sends is shown with textContent only.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "p4r-api-key";   // sessionStorage: this tab only
const LOOKUP_MAX = 200;            // ids per GET /v1/items/lookup (the route's bound)
const HISTORY_SHOWN = 20;

const details = new Map();  // item id -> {title, summary}, or null when the index has none
const pickTitles = new Map();  // item id -> title, from the pickers' sample
let seen = new Set();       // every item of the shown user's history
let shownUser = "";
let lastAnswer = null;      // the last rerank answer, re-rendered when the history changes
let pending = 0;            // work in flight; body[data-idle] tells tests (and people) when done

function busy(delta) {
  pending += delta;
  document.body.dataset.idle = pending === 0 ? "true" : "false";
}

async function tracked(work) {
  busy(1);
  try { return await work(); } finally { busy(-1); }
}

// -- the key -----------------------------------------------------------------------------------
function storedKey() {
  try { return sessionStorage.getItem(KEY_STORE) || ""; } catch { return ""; }
}

function showKeyState() {
  $("key-state").textContent = storedKey()
    ? "A key is set for this tab; it is sent with every request."
    : "No key set.";
}

// -- the API -----------------------------------------------------------------------------------
// Errors answer {"error": {"code", "message", ...}}; the message is the CLI's line.
async function api(path, options = {}) {
  const key = storedKey();
  const headers = { ...(key ? { "api-key": key } : {}), ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error((body.error && body.error.message) || `HTTP ${response.status}`);
    error.code = body.error && body.error.code;
    error.status = response.status;
    throw error;
  }
  return body;
}

function post(path, body) {
  return api(path, { method: "POST", headers: { "content-type": "application/json" },
                     body: JSON.stringify(body) });
}

function showError(error) {
  const box = $("error");
  box.textContent = error ? `Error: ${error.message || error}` : "";
  box.hidden = !error;
}

// -- small DOM helpers -------------------------------------------------------------------------
function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function day(seconds) {
  if (typeof seconds !== "number") return "";
  const when = new Date(seconds * 1000);
  return isNaN(when) ? "" : when.toISOString().slice(0, 10);
}

function titleOf(itemId) {
  const found = details.get(itemId);
  return (found && found.title) || pickTitles.get(itemId) || "";
}

// Titles and summaries of the ids not known yet, in bounded calls.
async function ensureDetails(ids) {
  const missing = [...new Set(ids)].filter((id) => !details.has(id));
  for (let start = 0; start < missing.length; start += LOOKUP_MAX) {
    const chunk = missing.slice(start, start + LOOKUP_MAX);
    const query = chunk.map((id) => `ids=${encodeURIComponent(id)}`).join("&");
    const answer = await api(`/v1/items/lookup?${query}`);
    for (const item of answer.items) details.set(item.item_id, item);
    for (const id of answer.not_found) details.set(id, null);
  }
}

// An item's name as a button that opens its personas, its id, and a "seen" mark.
function itemHead(itemId, rank, markSeen = true) {
  const head = el("div", null, "head");
  if (rank !== undefined) head.append(el("span", `${rank}.`, "rank"));
  const title = titleOf(itemId);
  const open = el("button", title || itemId, "item-title");
  open.type = "button";
  open.setAttribute("aria-haspopup", "dialog");
  open.setAttribute("aria-label", `${title || itemId}: show its personas`);
  open.addEventListener("click", () => openItem(itemId));
  head.append(open);
  if (title) head.append(el("span", itemId, "item-id"));
  if (markSeen && seen.has(itemId)) head.append(el("span", "✓ in your history", "mark seen"));
  return head;
}

function aboutItem(itemId) {
  const found = details.get(itemId);
  if (!found || !found.summary) return null;
  const about = el("details", null, "about");
  about.append(el("summary", "About this item"), el("p", found.summary, "item-summary"));
  return about;
}

// -- pickers and status ------------------------------------------------------------------------
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
  $("user-list").replaceChildren(...users.map((u) => {
    const option = el("option");
    option.value = u;
    return option;
  }));
  const pick = $("item-pick");
  pick.replaceChildren(pick.options[0]);
  const list = $("item-list");
  list.replaceChildren();
  for (const item of items) {
    pickTitles.set(item.item_id, item.title);
    const label = item.title ? `${item.title} (${item.item_id})` : item.item_id;
    const option = el("option", label);
    option.value = item.item_id;
    pick.append(option);
    const suggestion = el("option", item.title || item.item_id);
    suggestion.value = item.item_id;
    list.append(suggestion);
  }
}

async function connect() {
  showError(null);
  try {
    if (await loadStatus()) await loadPickers();
  } catch (error) {
    showError(error);
  }
}

// -- history -----------------------------------------------------------------------------------
function historyEntry(entry) {
  const li = el("li", null, "past");
  li.dataset.itemId = entry.item_id;
  li.append(itemHead(entry.item_id, undefined, false));  // all of them are in the history
  const meta = el("p", null, "past-meta");
  const when = el("time", day(entry.timestamp));
  when.dateTime = new Date(entry.timestamp * 1000).toISOString();
  meta.append(when);
  if (entry.rating !== null) meta.append(` · rating ${entry.rating}`);
  if (entry.in_profile) meta.append(" · in your profile");
  if (entry.origin === "live") meta.append(" ", el("span", "live", "mark live"));
  li.append(meta);
  if (entry.text) li.append(el("p", entry.text, "past-text"));
  const about = aboutItem(entry.item_id);
  if (about) li.append(about);
  return li;
}

async function showHistory() {
  const userId = $("user-id").value.trim();
  const history = $("history");
  if (!userId) return;
  const answer = await api(`/v1/users/${encodeURIComponent(userId)}/history` +
                           `?limit=${HISTORY_SHOWN}`);
  await ensureDetails(answer.interactions.map((e) => e.item_id));
  shownUser = userId;
  seen = new Set(answer.seen);
  const entries = [...answer.interactions].reverse();  // newest first
  history.replaceChildren(...entries.map(historyEntry));
  if (!entries.length) history.append(el("li", "no interactions", "muted"));
  const live = answer.interactions.filter((e) => e.origin === "live").length;
  const shown = answer.count > entries.length
    ? `the latest ${entries.length} of ${answer.count} interactions` : `${answer.count} interactions`;
  $("history-note").textContent = `${shown}; the profile averages the last ${answer.last_n}` +
    ` (marked "in your profile")` + (live ? `; ${live} arrived live, after version ` +
    `${answer.version} was built` : "");
  renderCandidates();
  if (lastAnswer && lastAnswer.user_id === userId) showResults(lastAnswer);
}

async function onUserSubmit(event) {
  event.preventDefault();
  showError(null);
  await tracked(async () => {
    try {
      await showHistory();
    } catch (error) {
      $("history").replaceChildren();
      $("history-note").textContent = "";
      seen = new Set();
      showError(error);
    }
  });
}

// -- candidates --------------------------------------------------------------------------------
function candidateIds() {
  return $("candidates").value.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

function setCandidates(ids) {
  $("candidates").value = [...new Set(ids)].join("\n");
  refreshCandidates();
}

function renderCandidates() {
  const list = $("candidate-list");
  list.replaceChildren(...[...new Set(candidateIds())].map((itemId) => {
    const li = el("li");
    li.dataset.itemId = itemId;
    if (details.get(itemId) === null && !pickTitles.has(itemId)) {
      li.classList.add("unknown");
      li.append(el("span", itemId, "item-id"), " ",
                el("span", "no summary in the index", "mark unknown"));
      return li;
    }
    li.append(itemHead(itemId));
    const about = aboutItem(itemId);
    if (about) li.append(about);
    return li;
  }));
}

async function refreshCandidates() {
  await tracked(async () => {
    try {
      await ensureDetails(candidateIds().slice(0, 1000));
    } catch (error) {
      showError(error);
    }
    renderCandidates();
  });
}

let typing = null;
function onCandidatesInput() {
  if (typing === null) busy(1);
  clearTimeout(typing);
  typing = setTimeout(async () => {
    typing = null;
    await refreshCandidates();
    busy(-1);
  }, 300);
}

function addPicked() {
  const value = $("item-pick").value;
  if (value) setCandidates([...candidateIds(), value]);
}

function randomItems() {
  const all = [...pickTitles.keys()];
  for (let i = all.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [all[i], all[j]] = [all[j], all[i]];
  }
  setCandidates(all.slice(0, 10));
}

// -- results -----------------------------------------------------------------------------------
const SCORED_BY = {
  persona: "cosine between your profile and this persona",
  summary: "cosine between your profile and the item's summary (it has no personas)",
};

function scoreLine(item) {
  const line = el("p", null, "score-line");
  if (item.score === null) {
    line.append(el("span", "no score", "score"),
                " — the served index does not know this id (kept last: \"keep unknown ids\")");
  } else {
    line.append(el("span", item.score.toFixed(4), "score"), ` — ${SCORED_BY[item.explanation]}`);
  }
  return line;
}

function becauseLine(because) {
  const title = titleOf(because.item_id) || because.item_id;
  const line = el("p", null, "because");
  line.append("Because you liked ", el("b", title));
  const when = day(because.timestamp);
  const weight = typeof because.weight === "number" ? `weight ${because.weight.toFixed(2)}` : "";
  const extra = [when, weight].filter(Boolean).join(", ");
  if (extra) line.append(` (${extra})`);
  return line;
}

// The persona is who the user resembles among the item's customers, in that customer's own
// terms: its rationale is their experience here, which may be a complaint, so it is shown as
// their view, never as a reason to recommend.
function personaBlock(persona) {
  const block = el("div", null, "persona");
  block.append(el("p", "The persona that matches you best", "persona-label"),
               el("p", persona.name, "persona-name"),
               el("p", persona.description, "persona-description"));
  const rationale = el("p", null, "persona-rationale");
  rationale.append(el("span", "Their experience here: ", "lead"),
                   el("span", persona.rationale, "rationale-text"));
  block.append(rationale);
  return block;
}

function resultRow(item, index) {
  const li = el("li", null, "result");
  li.dataset.itemId = item.item_id;
  li.dataset.explanation = item.explanation;
  const head = itemHead(item.item_id, index + 1);
  head.append(el("span", item.explanation, "badge"));
  li.append(head, scoreLine(item));
  if (item.because) li.append(becauseLine(item.because));
  if (item.explanation === "persona" && item.persona) {
    li.append(personaBlock(item.persona));
    const about = aboutItem(item.item_id);
    if (about) li.append(about);
  } else if (item.explanation === "summary") {
    const found = details.get(item.item_id);
    const block = el("div", null, "persona");
    block.append(el("p", "No personas: scored by its summary", "persona-label"),
                 el("p", (found && found.summary) || "(no summary text)", "summary-text"));
    li.append(block);
  }
  return li;
}

function showResults(answer) {
  lastAnswer = answer;
  $("results").replaceChildren(...(answer ? answer.items.map(resultRow) : []));
  const skipped = answer ? answer.unscored : [];
  $("not-ranked").textContent = skipped.length
    ? "Not ranked: " + skipped.map((u) => `${u.item_id} (position ${u.index + 1}: ` +
        `${u.reason === "duplicate" ? "a repeat" : "padding"})`).join(", ")
    : "";
}

function rerankRequest() {
  const request = { user_id: $("user-id").value.trim(), candidates: candidateIds(),
                    allow_unknown: $("allow-unknown").checked };
  const k = parseInt($("k").value, 10);
  if (k > 0) request.k = k;
  return request;
}

async function runRerank() {
  const request = rerankRequest();
  if (!request.user_id) throw new Error("pick or type a user id first");
  if (!request.candidates.length) throw new Error("paste or pick some candidates first");
  if (request.user_id !== shownUser) {
    $("user-id").value = request.user_id;
    await showHistory();
  }
  const answer = await post("/v1/rerank", request);
  await ensureDetails([...answer.items.map((i) => i.item_id),
                       ...answer.items.filter((i) => i.because).map((i) => i.because.item_id)]);
  renderCandidates();
  showResults(answer);
}

async function rerank() {
  showError(null);
  await tracked(async () => {
    try {
      await runRerank();
    } catch (error) {
      showResults(null);
      showError(error);
    }
  });
}

// -- one item's personas -----------------------------------------------------------------------
async function openItem(itemId) {
  const dialog = $("item-dialog");
  const found = details.get(itemId);
  $("dialog-title").textContent = titleOf(itemId) || itemId;
  $("dialog-id").textContent = itemId;
  $("dialog-summary").textContent = (found && found.summary) || "";
  $("dialog-note").textContent = "loading…";
  $("dialog-personas").replaceChildren();
  if (!dialog.open) dialog.showModal();
  await tracked(async () => {
    const best = lastAnswer && lastAnswer.items.find((i) => i.item_id === itemId);
    const bestId = best && best.persona ? best.persona.persona_id : null;
    try {
      const answer = await api(`/v1/items/${encodeURIComponent(itemId)}/personas`);
      $("dialog-note").textContent = "The kinds of customers its reviews describe, each in " +
        "their own terms." + (bestId ? " The one marked matched you best in the last rerank." : "");
      $("dialog-personas").replaceChildren(...answer.personas.map((persona) => {
        const li = el("li");
        li.dataset.personaId = persona.persona_id;
        const name = el("p", persona.name, "persona-name");
        if (persona.persona_id === bestId) {
          li.classList.add("best");
          name.append(" ", el("span", "best match for you", "mark seen"));
        }
        const rationale = el("p", null, "persona-rationale");
        rationale.append(el("span", "Their experience here: ", "lead"), persona.rationale);
        li.append(name, el("p", persona.description, "persona-description"), rationale);
        return li;
      }));
    } catch (error) {
      $("dialog-note").textContent = error.code === "not_found"
        ? "This item has no personas: it is scored by its summary."
        : `Error: ${error.message}`;
    }
  });
}

// -- adding an interaction ---------------------------------------------------------------------
function addResult(text, ok) {
  const line = $("add-result");
  line.textContent = text;
  line.className = ok ? "ok" : "bad";
}

async function addInteraction(event) {
  event.preventDefault();
  await tracked(async () => {
    const userId = $("user-id").value.trim();
    const interaction = { user_id: userId, item_id: $("add-item").value.trim(),
                          timestamp: Math.floor(Date.now() / 1000),
                          text: $("add-text").value.trim() };
    const rating = $("add-rating").value;
    if (rating !== "") interaction.rating = Number(rating);
    try {
      if (!userId) throw new Error("pick or type a user id first");
      const answer = await post("/v1/interactions", { interactions: [interaction] });
      const what = answer.accepted
        ? `Added ${answer.accepted} interaction for ${userId} (version ${answer.version})`
        : "Already recorded (same user, item and time): nothing added";
      $("add-text").value = "";
      await showHistory();
      const refreshed = lastAnswer && lastAnswer.user_id === userId && candidateIds().length;
      if (refreshed) await runRerank();
      addResult(`${what}; history${refreshed ? " and ranking" : ""} refreshed.`, true);
    } catch (error) {
      addResult(`Error: ${error.message}`, false);
    }
  });
}

// -- start -------------------------------------------------------------------------------------
async function saveKey(event) {
  event.preventDefault();
  const input = $("api-key");
  const key = input.value.trim();
  input.value = "";  // never shown back
  if (!key) return;
  try {
    sessionStorage.setItem(KEY_STORE, key);
  } catch (error) {
    showError(new Error(`this browser keeps no session storage, so the key cannot be used (${error.message})`));
    return;
  }
  showKeyState();
  await tracked(connect);
}

async function forgetKey() {
  try { sessionStorage.removeItem(KEY_STORE); } catch { /* nothing was stored */ }
  showKeyState();
  await tracked(connect);
}

async function start() {
  busy(1);
  $("key-form").addEventListener("submit", saveKey);
  $("forget-key").addEventListener("click", forgetKey);
  $("user-form").addEventListener("submit", onUserSubmit);
  $("add-form").addEventListener("submit", addInteraction);
  $("candidates").addEventListener("input", onCandidatesInput);
  $("add-item-button").addEventListener("click", addPicked);
  $("random-items").addEventListener("click", randomItems);
  $("clear-items").addEventListener("click", () => setCandidates([]));
  $("rerank").addEventListener("click", rerank);
  showKeyState();
  await connect();
  document.body.dataset.loaded = "true";
  busy(-1);
}

start();
