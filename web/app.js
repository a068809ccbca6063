// rllama web UI: chat over /v1/chat/completions and raw completion over /completion, both
// streamed as server-sent events. No framework: the DOM is built with createElement and
// textContent only (model text is never parsed as HTML; see markdown.js).
import { renderMarkdown, copyText } from "./markdown.js";
import { sseEvents, llama, LlamaError, streamError } from "./completion.js";

const $ = (id) => document.getElementById(id);
const store = {
  get(key, fallback) {
    try {
      const v = localStorage.getItem(key);
      return v === null ? fallback : JSON.parse(v);
    } catch (_) {
      return fallback;
    }
  },
  set(key, value) {
    try {
      localStorage.setItem(key, JSON.stringify(value));
    } catch (_) {
      /* quota or disabled storage: keep working in memory */
    }
  },
};
const K = { convs: "rllama.conversations", current: "rllama.current", settings: "rllama.settings", key: "rllama.apiKey", theme: "rllama.theme" };

// The sampling fields the settings dialog edits, in request spelling.
const FIELDS = ["temperature", "top_k", "top_p", "min_p", "n_predict", "repeat_penalty", "seed"];
const INT_FIELDS = new Set(["top_k", "n_predict", "seed"]);

const state = {
  convs: store.get(K.convs, []),
  currentId: store.get(K.current, null),
  settings: store.get(K.settings, {}), // only what the user set; the rest comes from /props
  defaults: {}, // /props default_generation_settings
  apiKey: store.get(K.key, ""),
  needsKey: false,
  busy: null, // { controller, kind: "chat" | "completion" }
  lastHealth: null,
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : v);
    }
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function announce(text) {
  const a = $("announcer");
  a.textContent = "";
  setTimeout(() => (a.textContent = text), 50);
}

// ---------------------------------------------------------------- HTTP

function authHeaders() {
  return state.apiKey ? { Authorization: `Bearer ${state.apiKey}` } : {};
}

async function api(path, { method = "GET", body, signal, quiet = false } = {}) {
  const headers = { ...authHeaders() };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal });
  if (res.status === 401) {
    let msg = "";
    try {
      msg = (await res.json()).error?.message || "";
    } catch (_) {
      /* not JSON */
    }
    showAuth(msg);
    throw new LlamaError(msg || "API key required", 401, null);
  }
  if (!res.ok && !quiet) {
    let msg = `HTTP ${res.status}`;
    try {
      const j = await res.json();
      msg = j.error?.message || j.message || msg;
    } catch (_) {
      /* not JSON */
    }
    throw new LlamaError(msg, res.status, null);
  }
  return res;
}

function showAuth(detail) {
  state.needsKey = true;
  $("auth-banner").hidden = false;
  $("auth-detail").textContent = state.apiKey ? `The key in use was refused${detail ? ` (${detail})` : ""}.` : "Enter it to continue.";
  $("settings-key-row").hidden = false;
  if (document.activeElement !== $("composer-input") || !$("composer-input").value) $("auth-key").focus();
}

$("auth-banner").addEventListener("submit", (e) => {
  e.preventDefault();
  state.apiKey = $("auth-key").value.trim();
  store.set(K.key, state.apiKey);
  $("auth-key").value = "";
  $("auth-banner").hidden = true;
  state.needsKey = false;
  loadProps();
  pollState();
  $("composer-input").focus();
});

// ---------------------------------------------------------------- server state

async function loadProps() {
  try {
    const res = await api("/props");
    const props = await res.json();
    state.defaults = props.default_generation_settings || {};
    const model = props.model_path || props.default_generation_settings?.model || props.model_alias || "";
    $("model-name").textContent = model ? String(model).split("/").pop() : "";
    $("model-name").title = model || "";
    if (model) document.title = `rllama · ${String(model).split("/").pop()}`;
  } catch (e) {
    if (e.status !== 401) console.warn("GET /props:", e.message);
  }
}

function setServerState(kind, text) {
  const box = $("server-state");
  box.dataset.state = kind;
  if ($("server-state-text").textContent !== text) $("server-state-text").textContent = text;
  box.title = text;
}

async function pollState() {
  try {
    const res = await fetch("/health", { headers: authHeaders() });
    let h = {};
    try {
      h = await res.json();
    } catch (_) {
      /* empty body */
    }
    state.lastHealth = h;
    if (res.status === 401) {
      setServerState("error", "API key required");
      showAuth("");
    } else if (res.ok) {
      const busy = h.slots_processing ?? 0;
      const idle = h.slots_idle;
      const tail = idle !== undefined ? ` · ${idle} idle, ${busy} busy` : "";
      setServerState(busy > 0 ? "busy" : "ok", `${h.status || "ok"}${tail}`);
    } else {
      setServerState("error", h.status || h.error?.message || `HTTP ${res.status}`);
    }
  } catch (_) {
    setServerState("error", "server unreachable");
  }
  if (state.needsKey) return;
  try {
    const res = await fetch("/slots", { headers: authHeaders() });
    if (!res.ok) {
      $("slots-state").textContent = ""; // --slots-endpoint-disable (501) or an error: say nothing
      return;
    }
    const slots = await res.json();
    if (!Array.isArray(slots)) return;
    $("slots-state").textContent = "Slots: " + slots.map((s) => {
      const processing = s.is_processing ?? s.state === 1;
      const n = s.next_token?.n_decoded;
      return `#${s.id} ${processing ? `busy${n ? ` (${n} tokens)` : ""}` : "idle"}`;
    }).join(", ");
  } catch (_) {
    /* /slots disabled or unreachable: show nothing */
  }
}

// after a generation: now, and again once the server has freed the slot (its next step)
function pollSoon() {
  pollState();
  setTimeout(pollState, 600);
}

let pollTimer = null;
function schedulePoll() {
  clearTimeout(pollTimer);
  pollTimer = setTimeout(async () => {
    if (!document.hidden) await pollState();
    schedulePoll();
  }, state.busy ? 1000 : 4000);
}

// ---------------------------------------------------------------- settings

// Only the fields the user set: the others are left to the server, whose defaults (/props)
// the settings dialog shows as placeholders. (Sending /props' values back would pin, e.g., the
// seed the server reported.)
function samplingParams() {
  const p = {};
  for (const f of FIELDS) {
    const v = state.settings[f];
    if (v !== undefined && v !== null && v !== "" && Number.isFinite(Number(v))) p[f] = Number(v);
  }
  return p;
}

// The constraint as request fields for each route: {grammar} or a JSON schema.
function constraint() {
  const kind = state.settings.constraint || "none";
  const text = (state.settings.constraint_text || "").trim();
  if (kind === "none" || !text) return { chat: {}, completion: {} };
  if (kind === "grammar") return { chat: { grammar: text }, completion: { grammar: text } };
  const schema = JSON.parse(text); // validated when saved
  return {
    chat: { response_format: { type: "json_object", schema } },
    completion: { json_schema: schema },
  };
}

function fillSettings() {
  const s = state.settings;
  $("set-system").value = s.system_prompt || "";
  for (const f of FIELDS) {
    const input = $(`set-${f}`);
    input.value = s[f] ?? "";
    const d = state.defaults[f];
    // the server reports float32 values (0.949999988...): show them as typed (0.95)
    input.placeholder = d === undefined || d === null ? "" : String(typeof d === "number" ? Number(d.toPrecision(6)) : d);
  }
  $("set-constraint").value = s.constraint || "none";
  $("set-constraint-text").value = s.constraint_text || "";
  $("set-api-key").value = state.apiKey;
  $("settings-key-row").hidden = !(state.needsKey || state.apiKey);
  $("settings-error").textContent = "";
  updateConstraintLabel();
}

function updateConstraintLabel() {
  const kind = $("set-constraint").value;
  $("set-constraint-text").disabled = kind === "none";
  $("set-constraint-label").textContent = kind === "json_schema" ? "JSON schema" : kind === "grammar" ? "GBNF grammar" : "Grammar or JSON schema (choose a constraint first)";
  $("set-constraint-text").placeholder = kind === "json_schema" ? '{"type": "object", "properties": {"answer": {"type": "string"}}}' : 'root ::= "yes" | "no"';
}
$("set-constraint").addEventListener("change", updateConstraintLabel);

function openSettings() {
  fillSettings();
  $("settings-dialog").showModal();
  $("set-system").focus();
}

function saveSettings() {
  const next = { system_prompt: $("set-system").value };
  for (const f of FIELDS) {
    const raw = $(`set-${f}`).value.trim();
    if (raw === "") continue;
    const n = Number(raw);
    if (!Number.isFinite(n) || (INT_FIELDS.has(f) && !Number.isInteger(n))) {
      $("settings-error").textContent = `${f} must be ${INT_FIELDS.has(f) ? "a whole number" : "a number"}.`;
      $(`set-${f}`).focus();
      return false;
    }
    next[f] = n;
  }
  next.constraint = $("set-constraint").value;
  next.constraint_text = $("set-constraint-text").value;
  if (next.constraint === "json_schema" && next.constraint_text.trim()) {
    try {
      JSON.parse(next.constraint_text);
    } catch (e) {
      $("settings-error").textContent = `The JSON schema is not valid JSON: ${e.message}`;
      $("set-constraint-text").focus();
      return false;
    }
  }
  state.settings = next;
  store.set(K.settings, next);
  const key = $("set-api-key").value.trim();
  if (key !== state.apiKey) {
    state.apiKey = key;
    store.set(K.key, key);
    if (key) {
      $("auth-banner").hidden = true;
      state.needsKey = false;
      loadProps();
    }
  }
  return true;
}

$("settings-btn").addEventListener("click", openSettings);
$("settings-cancel").addEventListener("click", () => $("settings-dialog").close());
$("settings-reset").addEventListener("click", () => {
  for (const f of FIELDS) $(`set-${f}`).value = "";
  $("set-constraint").value = "none";
  updateConstraintLabel();
});
$("settings-form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (saveSettings()) {
    $("settings-dialog").close();
    announce("Settings saved.");
  }
});

// ---------------------------------------------------------------- theme

const THEMES = ["auto", "light", "dark"];
function applyTheme(t) {
  if (t === "light" || t === "dark") document.documentElement.dataset.theme = t;
  else delete document.documentElement.dataset.theme;
  const label = t === "auto" ? "follow the system" : t;
  $("theme-btn").setAttribute("aria-label", `Theme: ${label}. Click to change.`);
  $("theme-btn").title = `Theme: ${label}`;
}
$("theme-btn").addEventListener("click", () => {
  const cur = currentTheme();
  const next = THEMES[(THEMES.indexOf(cur) + 1) % THEMES.length];
  try {
    localStorage.setItem(K.theme, next === "auto" ? "" : next);
  } catch (_) {
    /* in memory only */
  }
  applyTheme(next);
  announce(`Theme: ${next === "auto" ? "follows the system" : next}`);
});
function currentTheme() {
  try {
    const t = localStorage.getItem(K.theme);
    return t === "light" || t === "dark" ? t : "auto";
  } catch (_) {
    return "auto";
  }
}

// ---------------------------------------------------------------- conversations

function saveConvs() {
  store.set(K.convs, state.convs.map((c) => ({ ...c, messages: c.messages.map(({ pending, ...m }) => m) })));
  store.set(K.current, state.currentId);
}

function currentConv() {
  return state.convs.find((c) => c.id === state.currentId) || null;
}

function newConv() {
  const c = { id: `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`, title: "New conversation", created: Date.now(), updated: Date.now(), messages: [] };
  state.convs.unshift(c);
  state.currentId = c.id;
  return c;
}

function titleFrom(text) {
  const t = text.replace(/\s+/g, " ").trim();
  return t.length > 48 ? `${t.slice(0, 47)}…` : t || "New conversation";
}

function renderConvList() {
  const list = $("conv-list");
  list.replaceChildren();
  const convs = [...state.convs].sort((a, b) => b.updated - a.updated);
  for (const c of convs) {
    if (!c.messages.length && c.id !== state.currentId) continue;
    const li = el("li", { "aria-current": c.id === state.currentId ? "true" : "false" },
      el("button", { type: "button", class: "conv-open", title: c.title, onclick: () => openConv(c.id) }, c.title),
      el("button", { type: "button", class: "conv-del", "aria-label": `Delete conversation: ${c.title}`, onclick: () => deleteConv(c.id) }, "✕"));
    list.append(li);
  }
}

function openConv(id) {
  if (state.busy?.kind === "chat") stopGeneration();
  state.currentId = id;
  saveConvs();
  renderConvList();
  renderMessages();
  closeSidebar();
  $("composer-input").focus();
}

function deleteConv(id) {
  const c = state.convs.find((x) => x.id === id);
  if (!c || !confirm(`Delete "${c.title}"?`)) return;
  if (id === state.currentId && state.busy?.kind === "chat") stopGeneration();
  state.convs = state.convs.filter((x) => x.id !== id);
  if (state.currentId === id) state.currentId = state.convs[0]?.id || null;
  saveConvs();
  renderConvList();
  renderMessages();
}

$("new-chat").addEventListener("click", () => {
  if (state.busy?.kind === "chat") stopGeneration();
  const cur = currentConv();
  if (!cur || cur.messages.length) newConv();
  saveConvs();
  renderConvList();
  renderMessages();
  closeSidebar();
  $("composer-input").focus();
});

// ---------------------------------------------------------------- messages

function fmt(x, digits = 1) {
  return Number.isFinite(x) ? x.toFixed(digits) : "–";
}

function timingsText(t) {
  if (!t) return "";
  const parts = [];
  if (t.prompt_n !== undefined) parts.push(`prompt ${t.prompt_n} tok, ${fmt(t.prompt_per_second)} t/s`);
  if (t.predicted_n !== undefined) parts.push(`generation ${t.predicted_n} tok, ${fmt(t.predicted_per_second)} t/s`);
  if (t.client) parts.push("(measured here)");
  return parts.join(" · ");
}

function messageNode(conv, m, index) {
  const isUser = m.role === "user";
  const body = el("div", { class: "body" });
  if (isUser) body.textContent = m.content;
  else body.append(renderMarkdown(m.content));
  if (m.pending) body.classList.add("typing");
  const node = el("article", { class: `msg ${m.role}${m.pending ? " pending" : ""}`, "data-index": String(index), "aria-label": isUser ? "You said" : "Assistant replied" },
    el("div", { class: "who", "aria-hidden": "true" }, isUser ? "You" : "Assistant"), body);
  if (m.pending) node.setAttribute("aria-busy", "true");
  if (m.stopped) node.append(el("div", { class: "note" }, "Stopped."));
  if (m.error) node.append(el("div", { class: "note error", role: "alert" }, `Error: ${m.error}`));
  if (!m.pending) {
    const meta = el("div", { class: "meta" });
    const last = index === conv.messages.length - 1;
    meta.append(el("button", {
      type: "button", "aria-label": isUser ? "Copy message" : "Copy reply",
      onclick: async (e) => {
        const ok = await copyText(m.content);
        e.target.textContent = ok ? "Copied" : "Copy failed";
        setTimeout(() => (e.target.textContent = "Copy"), 1500);
      },
    }, "Copy"));
    if (isUser) meta.append(el("button", { type: "button", "aria-label": "Edit and resend this message", onclick: () => editMessage(conv, index, node) }, "Edit"));
    if (!isUser && last) meta.append(el("button", { type: "button", class: "regen-btn", "aria-label": "Regenerate this reply", onclick: () => regenerate(conv) }, "Regenerate"));
    if (!isUser && m.timings) meta.append(el("span", { class: "timings" }, timingsText(m.timings)));
    if (state.busy) for (const b of meta.querySelectorAll("button")) if (b.textContent !== "Copy") b.disabled = true;
    node.append(meta);
  }
  return node;
}

function renderMessages() {
  const conv = currentConv();
  const box = $("messages");
  const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  box.replaceChildren();
  const msgs = conv ? conv.messages : [];
  msgs.forEach((m, i) => box.append(messageNode(conv, m, i)));
  $("empty-hint").hidden = msgs.length > 0;
  if (atBottom || state.busy) box.scrollTop = box.scrollHeight;
}

// Re-render only the streaming message, at most once per frame.
let frameQueued = false;
function renderStreaming(conv, index) {
  if (frameQueued) return;
  frameQueued = true;
  requestAnimationFrame(() => {
    frameQueued = false;
    const box = $("messages");
    const old = box.querySelector(`article[data-index="${index}"]`);
    if (!old || currentConv() !== conv) return;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 60;
    old.replaceWith(messageNode(conv, conv.messages[index], index));
    if (atBottom) box.scrollTop = box.scrollHeight;
  });
}

function editMessage(conv, index, node) {
  if (state.busy) return;
  const m = conv.messages[index];
  const ta = el("textarea", { "aria-label": "Edit message" });
  ta.value = m.content;
  const cancel = () => renderMessages();
  const send = () => {
    const text = ta.value.trim();
    if (!text) return;
    conv.messages = conv.messages.slice(0, index);
    conv.messages.push({ role: "user", content: text });
    if (index === 0) conv.title = titleFrom(text);
    runChat(conv);
  };
  ta.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    } else if (e.key === "Escape") {
      e.preventDefault();
      e.stopPropagation();
      cancel();
    }
  });
  const box = el("div", { class: "edit-box" }, ta,
    el("div", { class: "row" },
      el("button", { type: "button", onclick: cancel }, "Cancel"),
      el("button", { type: "button", class: "primary", onclick: send }, "Send")));
  node.replaceChildren(el("div", { class: "who" }, "Edit your message"), box);
  ta.focus();
}

function regenerate(conv) {
  if (state.busy) return;
  while (conv.messages.length && conv.messages[conv.messages.length - 1].role === "assistant") conv.messages.pop();
  if (!conv.messages.length) return;
  runChat(conv);
}

function setBusy(kind, controller) {
  state.busy = kind ? { kind, controller } : null;
  $("send-btn").hidden = kind === "chat";
  $("stop-btn").hidden = kind !== "chat";
  $("complete-btn").hidden = kind === "completion";
  $("complete-stop-btn").hidden = kind !== "completion";
  $("send-btn").disabled = !!kind;
  $("complete-btn").disabled = !!kind;
  $("messages").setAttribute("aria-busy", kind === "chat" ? "true" : "false");
  schedulePoll();
}

function stopGeneration() {
  if (!state.busy) return;
  state.busy.stopped = true; // the user's stop, not an error that also closed the stream
  state.busy.controller.abort();
}
$("stop-btn").addEventListener("click", () => {
  stopGeneration();
  $("composer-input").focus();
});

function chatRequest(conv) {
  const messages = [];
  const system = (state.settings.system_prompt || "").trim();
  if (system) messages.push({ role: "system", content: system });
  for (const m of conv.messages) {
    if (m.pending || (m.role === "assistant" && !m.content)) continue;
    messages.push({ role: m.role, content: m.content });
  }
  const p = samplingParams();
  const body = { messages, stream: true, ...p, ...constraint().chat };
  if (p.n_predict !== undefined && p.n_predict >= 0) body.max_tokens = p.n_predict;
  return body;
}

async function runChat(conv) {
  let body;
  try {
    body = chatRequest(conv);
  } catch (e) {
    conv.messages.push({ role: "assistant", content: "", error: `settings: ${e.message}` });
    renderMessages();
    return;
  }
  const reply = { role: "assistant", content: "", pending: true };
  conv.messages.push(reply);
  conv.updated = Date.now();
  const index = conv.messages.length - 1;
  const controller = new AbortController();
  setBusy("chat", controller);
  saveConvs();
  renderConvList();
  renderMessages();
  const t0 = performance.now();
  let tFirst = 0;
  let n = 0;
  const live = () => {
    const now = performance.now();
    const gen = n > 1 ? (1000 * (n - 1)) / (now - tFirst) : NaN;
    $("stats").textContent = n ? `Generating: ${n} tokens · ${fmt(gen)} t/s · first token after ${fmt(tFirst - t0, 0)} ms` : "Waiting for the first token…";
  };
  live();
  try {
    const res = await api("/v1/chat/completions", { method: "POST", body, signal: controller.signal });
    for await (const ev of sseEvents(res)) {
      if (ev.error !== undefined) throw streamError(ev.error);
      if (ev.data === "[DONE]") break;
      let d;
      try {
        d = JSON.parse(ev.data);
      } catch (_) {
        continue;
      }
      if (d.error) throw new LlamaError(d.error.message || "server error", d.error.code, d);
      const choice = d.choices?.[0];
      const delta = choice?.delta?.content;
      if (delta) {
        if (!n) tFirst = performance.now();
        n += 1;
        reply.content += delta;
        renderStreaming(conv, index);
        live();
      }
      if (d.timings) reply.timings = d.timings;
      if (choice?.finish_reason) reply.finish = choice.finish_reason;
    }
  } catch (e) {
    if (e.name === "AbortError" || state.busy?.stopped) reply.stopped = true;
    else reply.error = e.message || String(e);
  } finally {
    delete reply.pending;
    if (!reply.timings && n) {
      const tEnd = performance.now();
      reply.timings = { client: true, predicted_n: n, predicted_per_second: n > 1 ? (1000 * (n - 1)) / (tEnd - tFirst) : NaN };
    }
    if (reply.timings) $("stats").textContent = `Last reply: ${timingsText(reply.timings)}`;
    else if (reply.stopped) $("stats").textContent = "Stopped before the first token.";
    conv.updated = Date.now();
    setBusy(null);
    saveConvs();
    renderMessages();
    announce(reply.error ? `Error: ${reply.error}` : reply.stopped ? "Reply stopped." : "Reply finished.");
    pollSoon();
  }
}

$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  if (state.busy) return;
  const input = $("composer-input");
  const text = input.value.trim();
  if (!text) return;
  let conv = currentConv();
  if (!conv) conv = newConv();
  if (!conv.messages.length) conv.title = titleFrom(text);
  // a failed or stopped-empty reply at the end is not part of the conversation
  while (conv.messages.length && conv.messages[conv.messages.length - 1].role === "assistant" && !conv.messages[conv.messages.length - 1].content) conv.messages.pop();
  conv.messages.push({ role: "user", content: text });
  input.value = "";
  autosize(input);
  runChat(conv);
});

function autosize(ta) {
  ta.style.height = "auto";
  ta.style.height = `${Math.min(ta.scrollHeight + 2, window.innerHeight * 0.4)}px`;
}
$("composer-input").addEventListener("input", (e) => autosize(e.target));
$("composer-input").addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $("composer").requestSubmit();
  }
});

document.addEventListener("keydown", (e) => {
  if (e.key === "Escape" && state.busy && !$("settings-dialog").open) {
    e.preventDefault();
    stopGeneration();
  }
});

// ---------------------------------------------------------------- raw completion

const tokens = []; // { text, probs: [{ tok_str, prob }], prob }
let activeTok = -1;

// One shape for the probability entries of every llama.cpp version.
function normalizeProbs(entry) {
  const list = entry.probs || entry.top_probs || entry.top_logprobs || [];
  const top = list.map((p) => ({
    tok_str: p.tok_str ?? p.token ?? "",
    prob: p.prob ?? (p.logprob !== undefined ? Math.exp(p.logprob) : NaN),
  }));
  const picked = entry.content ?? entry.token ?? "";
  let prob = entry.prob ?? (entry.logprob !== undefined ? Math.exp(entry.logprob) : undefined);
  if (prob === undefined) prob = top.find((p) => p.tok_str === picked)?.prob;
  return { picked, prob, top };
}

function showTip(i, anchor) {
  const tip = $("token-tip");
  const t = tokens[i];
  if (!t || !t.entries.length) {
    tip.hidden = true;
    return;
  }
  const rows = [];
  for (const e of t.entries) {
    rows.push(el("tr", null, el("td", { colspan: "3" }, `token ${JSON.stringify(e.picked)}${e.prob !== undefined ? ` · p=${fmt(e.prob * 100, 1)}%` : ""}`)));
    for (const p of e.top) {
      rows.push(el("tr", { class: p.tok_str === e.picked ? "picked" : null },
        el("td", null, JSON.stringify(p.tok_str)),
        el("td", null, `${fmt(p.prob * 100, 1)}%`),
        el("td", null, el("span", { class: "bar", style: null }))));
      rows[rows.length - 1].querySelector(".bar").style.width = `${Math.max(1, Math.round((p.prob || 0) * 80))}px`;
    }
  }
  tip.replaceChildren(el("table", null, el("tbody", null, ...rows)));
  tip.hidden = false;
  const r = anchor.getBoundingClientRect();
  const tr = tip.getBoundingClientRect();
  let top = r.bottom + 6;
  if (top + tr.height > window.innerHeight) top = Math.max(4, r.top - tr.height - 6);
  tip.style.top = `${top}px`;
  tip.style.left = `${Math.max(4, Math.min(r.left, window.innerWidth - tr.width - 4))}px`;
}

function hideTip() {
  $("token-tip").hidden = true;
}

function setActive(i) {
  const out = $("completion-output");
  out.querySelector(".tok.active")?.classList.remove("active");
  activeTok = i;
  const span = out.querySelector(`.tok[data-i="${i}"]`);
  if (!span) return hideTip();
  span.classList.add("active");
  span.scrollIntoView({ block: "nearest" });
  showTip(i, span);
}

const out = $("completion-output");
out.addEventListener("mouseover", (e) => {
  const span = e.target.closest(".tok");
  if (span) showTip(Number(span.dataset.i), span);
});
out.addEventListener("mouseleave", () => (activeTok >= 0 && document.activeElement === out ? setActive(activeTok) : hideTip()));
out.addEventListener("keydown", (e) => {
  if (!tokens.length) return;
  if (e.key === "ArrowRight" || e.key === "ArrowDown") setActive(Math.min(tokens.length - 1, activeTok + 1));
  else if (e.key === "ArrowLeft" || e.key === "ArrowUp") setActive(Math.max(0, activeTok - 1));
  else if (e.key === "Home") setActive(0);
  else if (e.key === "End") setActive(tokens.length - 1);
  else if (e.key === "Escape") hideTip();
  else return;
  e.preventDefault();
});
out.addEventListener("focus", () => tokens.length && setActive(activeTok < 0 ? 0 : activeTok));
out.addEventListener("blur", hideTip);

function probClass(p) {
  if (p === undefined || !Number.isFinite(p)) return null;
  return p < 0.3 ? "low" : p < 0.6 ? "mid" : null;
}

$("completion-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (state.busy) return;
  const prompt = $("prompt-input").value;
  let extra;
  try {
    extra = constraint().completion;
  } catch (err) {
    $("stats").textContent = `Settings: ${err.message}`;
    return;
  }
  const nProbs = Math.max(0, Math.min(20, parseInt($("n-probs").value, 10) || 0));
  const params = { ...samplingParams(), ...extra, n_probs: nProbs };
  const controller = new AbortController();
  setBusy("completion", controller);
  tokens.length = 0;
  activeTok = -1;
  hideTip();
  out.replaceChildren(el("span", { class: "prompt-echo" }, prompt));
  out.setAttribute("aria-busy", "true");
  $("complete-append-btn").disabled = true;
  const t0 = performance.now();
  let tFirst = 0;
  let finalTimings = null;
  let stopped = false;
  try {
    for await (const chunk of llama(prompt, params, { controller, api_key: state.apiKey })) {
      const d = chunk.data;
      if (d.timings) finalTimings = d.timings;
      const text = d.content || "";
      const entries = (d.completion_probabilities || []).map(normalizeProbs);
      if (!text && !entries.length) continue;
      if (!tokens.length) tFirst = performance.now();
      const i = tokens.length;
      const prob = entries.length === 1 ? entries[0].prob : undefined;
      tokens.push({ text, entries });
      const span = el("span", { class: "tok", "data-i": String(i), "data-p": probClass(prob) });
      span.textContent = text;
      out.append(span);
      const n = tokens.length;
      $("stats").textContent = `Generating: ${n} tokens · ${fmt(n > 1 ? (1000 * (n - 1)) / (performance.now() - tFirst) : NaN)} t/s · first token after ${fmt(tFirst - t0, 0)} ms`;
      out.scrollTop = out.scrollHeight;
    }
  } catch (err) {
    if (err.name === "AbortError" || state.busy?.stopped) stopped = true;
    else {
      if (err.status === 401) showAuth(err.message);
      out.append(el("span", { class: "error", role: "alert" }, `\n[error: ${err.message}]`));
    }
  } finally {
    out.setAttribute("aria-busy", "false");
    setBusy(null);
    $("complete-append-btn").disabled = !tokens.length;
    $("stats").textContent = finalTimings ? `Last completion: ${timingsText(finalTimings)}` : stopped ? `Stopped after ${tokens.length} tokens.` : $("stats").textContent;
    announce(stopped ? "Completion stopped." : "Completion finished.");
    pollSoon();
  }
});
$("complete-stop-btn").addEventListener("click", stopGeneration);
$("complete-append-btn").addEventListener("click", () => {
  $("prompt-input").value += tokens.map((t) => t.text).join("");
  $("prompt-input").focus();
});

// ---------------------------------------------------------------- tabs and sidebar

function selectTab(which) {
  const chat = which === "chat";
  $("tab-chat").setAttribute("aria-selected", String(chat));
  $("tab-completion").setAttribute("aria-selected", String(!chat));
  $("tab-chat").tabIndex = chat ? 0 : -1;
  $("tab-completion").tabIndex = chat ? -1 : 0;
  $("chat-view").hidden = !chat;
  $("completion-view").hidden = chat;
  $("sidebar").hidden = !chat; // conversations belong to the chat view
  $("menu-btn").hidden = !chat;
  if (!chat) closeSidebar();
  hideTip();
}
$("tab-chat").addEventListener("click", () => selectTab("chat"));
$("tab-completion").addEventListener("click", () => selectTab("completion"));
for (const id of ["tab-chat", "tab-completion"]) {
  $(id).addEventListener("keydown", (e) => {
    if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
    const next = id === "tab-chat" ? "completion" : "chat";
    selectTab(next);
    $(`tab-${next}`).focus();
    e.preventDefault();
  });
}

function closeSidebar() {
  $("sidebar").classList.remove("open");
  $("scrim").hidden = true;
  $("menu-btn").setAttribute("aria-expanded", "false");
}
$("menu-btn").addEventListener("click", () => {
  const open = !$("sidebar").classList.contains("open");
  $("sidebar").classList.toggle("open", open);
  $("scrim").hidden = !open;
  $("menu-btn").setAttribute("aria-expanded", String(open));
  if (open) $("new-chat").focus();
});
$("scrim").addEventListener("click", closeSidebar);
$("sidebar").addEventListener("keydown", (e) => {
  if (e.key === "Escape" && $("sidebar").classList.contains("open")) {
    closeSidebar();
    $("menu-btn").focus();
  }
});

// ---------------------------------------------------------------- start

// What another tab saved (or a hand-edited store) is taken only in a shape we can show.
function validConvs(v) {
  if (!Array.isArray(v)) return [];
  return v.filter((c) => c && typeof c.id === "string" && Array.isArray(c.messages)).map((c) => ({
    ...c,
    title: String(c.title || "Conversation"),
    updated: Number(c.updated) || 0,
    messages: c.messages.filter((m) => m && (m.role === "user" || m.role === "assistant") && typeof m.content === "string"),
  }));
}
state.convs = validConvs(state.convs);
if (!state.settings || typeof state.settings !== "object" || Array.isArray(state.settings)) state.settings = {};
if (typeof state.apiKey !== "string") state.apiKey = "";

// Another tab changed the conversations: show them, unless this one is writing a reply.
window.addEventListener("storage", (e) => {
  if (e.key !== K.convs || state.busy?.kind === "chat") return;
  state.convs = validConvs(store.get(K.convs, []));
  if (!currentConv()) state.currentId = state.convs[0]?.id || null;
  renderConvList();
  renderMessages();
});

applyTheme(currentTheme());
if (!currentConv()) {
  state.currentId = state.convs[0]?.id || null;
}
renderConvList();
renderMessages();
if (state.apiKey) $("settings-key-row").hidden = false;
loadProps();
pollState();
schedulePoll();
document.addEventListener("visibilitychange", () => !document.hidden && pollState());

// for tests and the curious: the state, read-only by convention
window.rllamaUI = { state, renderMarkdown };
