// rllama's /completion.js: a small client for the server's streaming /completion route.
//
//   import { llama } from '/completion.js'
//   for await (const chunk of llama("Tell me a joke", { n_predict: 64 })) {
//     document.write(chunk.data.content)
//   }
//
// Exports
//   llama(prompt, params = {}, config = {})   async generator of server-sent events; each item
//                                             is { data, event?, id?, retry? } with `data` the
//                                             parsed JSON chunk ({ content, stop, ... }); the last
//                                             one has data.stop === true and the full result
//                                             (timings, generation_settings, ...)
//   llamaPromise(prompt, params, config)      resolves to the whole generated text
//   llamaEventTarget(prompt, params, config)  EventTarget firing "message" (detail = data),
//                                             "generation_settings", "timings" and "done"
//   llamaComplete(params, controller, cb)     callback form: cb(chunk) per chunk
//   llamaModelInfo(config)                    GET /props, cached
//   sseEvents(response)                       async generator parsing any text/event-stream body
//
// `config` may hold: api_url (default: this page's origin), api_key (sent as a Bearer token;
// params.api_key works too), controller (an AbortController: abort() stops the generation and the
// server frees the slot), endpoint (default "/completion"). Failures throw a LlamaError with the
// HTTP status and the server's message (llamaEventTarget fires "error" instead).

const paramDefaults = {
  stream: true,
  n_predict: 500,
  temperature: 0.2,
  stop: ["</s>"],
};

let generationSettings = null;

function headersFor(config, json = true) {
  const h = {};
  if (json) h["Content-Type"] = "application/json";
  h["Accept"] = "text/event-stream";
  if (config.api_key) h["Authorization"] = `Bearer ${config.api_key}`;
  return h;
}

// Parse a fetch Response body as server-sent events (WHATWG rules: fields "data", "event",
// "id", "retry"; lines starting with ":" are comments; a blank line ends an event). llama.cpp's
// server also sends "error: {json}" lines when a stream fails midway: those come out as
// events with an `error` field (the raw text).
export async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let ev = { data: [], event: undefined, id: undefined, retry: undefined, error: undefined };
  const flush = () => {
    let out = null;
    if (ev.data.length || ev.error !== undefined) {
      out = { data: ev.data.join("\n"), event: ev.event, id: ev.id, retry: ev.retry };
      if (ev.error !== undefined) out.error = ev.error;
    }
    ev = { data: [], event: undefined, id: ev.id, retry: undefined, error: undefined };
    return out;
  };
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, nl);
        const sep = buffer[nl] === "\r" && buffer[nl + 1] === "\n" ? 2 : 1;
        // a lone "\r" at the end of the buffer may be the first half of "\r\n": wait for more
        if (buffer[nl] === "\r" && nl + 1 === buffer.length) break;
        buffer = buffer.slice(nl + sep);
        if (line === "") {
          const out = flush();
          if (out) yield out;
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "data") ev.data.push(value);
        else if (field === "event") ev.event = value;
        else if (field === "id") ev.id = value;
        else if (field === "retry") ev.retry = parseInt(value, 10);
        else if (field === "error") ev.error = ev.error === undefined ? value : `${ev.error}\n${value}`;
      }
    }
    buffer += decoder.decode();
    if (buffer.startsWith("data:")) ev.data.push(buffer.slice(5).replace(/^ /, ""));
    else if (buffer.startsWith("error:")) ev.error = buffer.slice(6).replace(/^ /, "");
    const out = flush();
    if (out) yield out;
  } finally {
    reader.releaseLock();
  }
}

// An error carrying the HTTP status and the server's JSON error body, if any.
export class LlamaError extends Error {
  constructor(message, status, body) {
    super(message);
    this.name = "LlamaError";
    this.status = status;
    this.body = body;
  }
}

async function errorFrom(response) {
  let body = null;
  let message = `HTTP ${response.status}`;
  try {
    body = await response.json();
    if (body && body.error) message = body.error.message || message;
  } catch (_) {
    /* not JSON */
  }
  return new LlamaError(message, response.status, body);
}

// The error a stream reported midway ("error: {json}" or a data chunk with an "error" key).
export function streamError(text) {
  let body = null;
  try {
    body = typeof text === "string" ? JSON.parse(text) : text;
  } catch (_) {
    return new LlamaError(String(text) || "server error", 500, null);
  }
  const e = body && (body.error || body);
  return new LlamaError((e && e.message) || "server error", (e && e.code) || 500, body);
}

export async function* llama(prompt, params = {}, config = {}) {
  const controller = config.controller || new AbortController();
  const base = config.api_url || "";
  const endpoint = config.endpoint || "/completion";
  // the key may come in config (ours) or in params (older pages): it is a header, never a field
  const { api_key: paramsKey, ...rest } = params;
  const body = { ...paramDefaults, ...rest, prompt, stream: true };
  const response = await fetch(`${base}${endpoint}`, {
    method: "POST",
    body: JSON.stringify(body),
    headers: headersFor({ ...config, api_key: config.api_key || paramsKey }),
    signal: controller.signal,
  });
  if (!response.ok) throw await errorFrom(response);
  try {
    for await (const ev of sseEvents(response)) {
      if (ev.error !== undefined) throw streamError(ev.error);
      if (ev.data === "[DONE]") return;
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch (_) {
        continue;
      }
      const item = { data };
      if (ev.event !== undefined) item.event = ev.event;
      if (ev.id !== undefined) item.id = ev.id;
      if (ev.retry !== undefined) item.retry = ev.retry;
      if (data.error) {
        throw new LlamaError(data.error.message || "server error", data.error.code || 500, data);
      }
      if (data.generation_settings) generationSettings = data.generation_settings;
      yield item;
      if (data.stop) return;
    }
  } finally {
    // leaving the loop early (break, an exception) closes the connection: the server cancels
    controller.abort();
  }
}

export function llamaEventTarget(prompt, params = {}, config = {}) {
  const target = new EventTarget();
  (async () => {
    let content = "";
    try {
      for await (const chunk of llama(prompt, params, config)) {
        const data = chunk.data;
        if (data.content) content += data.content;
        target.dispatchEvent(new CustomEvent("message", { detail: data }));
        if (data.generation_settings) {
          target.dispatchEvent(new CustomEvent("generation_settings", { detail: data.generation_settings }));
        }
        if (data.timings) target.dispatchEvent(new CustomEvent("timings", { detail: data.timings }));
      }
    } catch (e) {
      target.dispatchEvent(new CustomEvent("error", { detail: e }));
    }
    target.dispatchEvent(new CustomEvent("done", { detail: { content } }));
  })();
  return target;
}

export async function llamaPromise(prompt, params = {}, config = {}) {
  let content = "";
  for await (const chunk of llama(prompt, params, config)) content += chunk.data.content || "";
  return content;
}

export async function llamaComplete(params, controller, callback) {
  const { prompt, ...rest } = params;
  for await (const chunk of llama(prompt, rest, { controller })) callback(chunk);
}

export async function llamaModelInfo(config = {}) {
  if (!generationSettings) {
    const response = await fetch(`${config.api_url || ""}/props`, { headers: headersFor(config, false) });
    if (!response.ok) throw await errorFrom(response);
    generationSettings = (await response.json()).default_generation_settings;
  }
  return generationSettings;
}

export default llama;
