"""In-process generation: `Model(path_or_name).complete(prompt, **options)` returns what the
/completion endpoint returns, computed by the same engine the server uses.

Every request goes through the Rust engine (one scheduler thread, `n_parallel` slots, continuous
batching). One pump thread per model waits on the engine's events with the GIL released and
hands each request its events once per step: to a `queue.SimpleQueue` for the synchronous
iterators, or to an asyncio queue (`call_soon_threadsafe`) for `acomplete`.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rllama import _core, params, sampling, validate
from rllama.chat import apply_template, resolve_template
from rllama.errors import InvalidRequestError, RllamaError
from rllama.gguf import GgufReader
from rllama.models import resolve
from rllama.tokenizer import Tokenizer

# Options `Model.complete` knows (the HTTP server passes only known fields; the library refuses
# a misspelled one instead of silently ignoring it).
_OPTIONS = set(sampling.DEFAULTS) | {
    "penalty_prompt", "logit_bias", "grammar", "json_schema", "response_format", "samplers", "prompt",
    "n_predict", "max_tokens", "stop", "stream", "cache_prompt", "n_keep", "return_tokens",
    "post_sampling_probs", "add_special", "id_slot", "n_probs"} | params._SERVER_ONLY
_FINAL = ("done", "error", "floats", "slot", "dead")


class _Channel:
    """One request's event buffer between the pump thread and its consumer, bounded.

    The pump `put`s each step's events; the consumer reports what it `took`. Past `HIGH`
    events not yet taken the request is paused in the engine (only its own sequence waits, the
    other slots keep their steps) and below `LOW` it resumes; one paused for longer than
    `timeout` seconds is cancelled (its final event still arrives). `deliver(events)` hands the
    events over: a `queue.SimpleQueue.put`, or a `call_soon_threadsafe` into an event loop."""

    HIGH = 256
    LOW = 64

    def __init__(self, core: Any, deliver: Any, timeout: float):
        self.rid: int | None = None
        self._core, self._deliver, self._timeout = core, deliver, timeout
        self._lock = threading.Lock()
        self._pending = 0
        self._paused_at: float | None = None
        self._cancelled = False

    def put(self, evs: list[tuple[str, Any]]) -> None:
        with self._lock:
            self._pending += len(evs)
            pause = self._paused_at is None and self._pending >= self.HIGH and not self._cancelled
            if pause:
                self._paused_at = time.monotonic()
        if pause:
            self._core.pause(self.rid, True)
        try:
            self._deliver(evs)
        except RuntimeError:  # an event loop that has closed: its requests were cancelled
            pass

    def took(self, n: int) -> None:
        with self._lock:
            self._pending -= n
            resume = self._paused_at is not None and self._pending <= self.LOW and not self._cancelled
            if resume:
                self._paused_at = None
        if resume:
            self._core.pause(self.rid, False)

    def expire(self, now: float) -> None:
        """Cancel the request if it has been paused for longer than the timeout."""
        with self._lock:
            late = self._paused_at is not None and not self._cancelled and now - self._paused_at > self._timeout
            if late:
                self._cancelled = True
        if late:
            self._core.cancel(self.rid)


class _Pump:
    """The one thread that waits on the engine's events and hands them to each request's channel."""

    def __init__(self, core: Any):
        self._core = core
        self._sinks: dict[int, _Channel] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._dead: str | None = None
        self._thread = threading.Thread(target=self._run, name="rllama-pump", daemon=True)
        self._thread.start()

    def submit(self, start: Any, chan: _Channel) -> int:
        """`start()` queues the request and returns its id; `chan` receives its events (a list
        of (kind, payload) per step) on the pump thread."""
        with self._lock:
            if self._dead is not None:
                raise RllamaError(self._dead)
            rid = start()
            chan.rid = rid
            self._sinks[rid] = chan
        return rid

    def _run(self) -> None:
        last_check = time.monotonic()
        while not self._closed:
            try:
                events = self._core.wait_events(100)
            except Exception as e:  # noqa: BLE001 -- the engine is gone: fail everything still waiting
                events = [(0, "dead", f"the engine stopped: {e}")]
            now = time.monotonic()
            if now - last_check > 0.5:
                last_check = now
                with self._lock:
                    chans = list(self._sinks.values())
                for chan in chans:
                    chan.expire(now)
            if not events:
                continue
            per: dict[int, list[tuple[str, Any]]] = {}
            for rid, kind, payload in events:
                if kind == "dead":
                    self._dead = payload
                    with self._lock:
                        sinks, self._sinks = self._sinks, {}
                    for chan in sinks.values():
                        chan.put([("error", RllamaError(payload))])
                    return
                per.setdefault(rid, []).append((kind, payload))
            with self._lock:
                targets = [(self._sinks.get(rid), evs) for rid, evs in per.items()]
                for rid, evs in per.items():
                    if evs[-1][0] in _FINAL:
                        self._sinks.pop(rid, None)
            for chan, evs in targets:
                if chan is not None:
                    chan.put(evs)

    def close(self) -> None:
        self._closed = True


def _shutdown(core: Any, pump: _Pump) -> None:
    pump.close()
    core.shutdown()


class Model:
    """A GGUF model loaded for generation.

    `path_or_name` is a file, a URL or a built-in name (see `rllama.models`). `n_ctx` is the
    context size (0: the model's training context), shared by `n_parallel` slots (each gets
    `n_ctx / n_parallel`, or all of it with `kv_unified`); `n_threads` are the compute threads for
    generation, `n_threads_batch` those for prompts (default: `n_threads`; one pool of the larger
    size). `flash_attn` ("on", "off", "auto") picks the attention path like llama.cpp's
    `--flash-attn`. Every method is safe to call from many threads at once; concurrent
    generations are batched together. A stream whose consumer falls more than a few hundred
    events behind is paused (only its own sequence waits) and cancelled after `stream_timeout`
    seconds without being read. `deterministic=True` sums every token in one order whatever shares
    its batch or however its prompt is cut, so a request's tokens and probabilities are the same
    bits at any concurrency (the default keeps llama.cpp's batch-size-dependent orders, which
    reproduce its outputs exactly). `grp_attn_n` > 1 turns on self-extend (llama.cpp's
    `--grp-attn-n/--grp-attn-w`): once a sequence's next position reaches a window of
    `grp_attn_w` positions past the grouped ones, that window's positions are divided by
    `grp_attn_n` and its keys re-rotated, so a context longer than the model was trained on keeps
    to the positions it knows. Such a sequence never shifts its context, and its regrouped cells
    are not shared with other requests or saved to slot files. Not for sliding-window models.
    """

    def __init__(self, path_or_name: str | os.PathLike[str] | None = None, *, n_ctx: int = 4096,
                 n_parallel: int = 1, kv_unified: bool = False, context_shift: bool = True,
                 slot_prompt_similarity: float = 0.5, n_probs_max: int = params.N_PROBS_MAX,
                 stream_timeout: float = 600.0,
                 n_threads: int | None = None, n_threads_batch: int | None = None, n_batch: int = 2048,
                 n_ubatch: int = 512,
                 no_mmap: bool = False, mlock: bool = False, chat_template: str | None = None,
                 alias: str | None = None, cache_type_k: str = "f16", cache_type_v: str = "f16",
                 rope_scaling: str | None = None, rope_freq_base: float | None = None,
                 rope_freq_scale: float | None = None, yarn_orig_ctx: int | None = None,
                 yarn_ext_factor: float | None = None, yarn_attn_factor: float | None = None,
                 yarn_beta_fast: float | None = None, yarn_beta_slow: float | None = None,
                 flash_attn: str = "auto", deterministic: bool = False, grp_attn_n: int = 1,
                 grp_attn_w: int = 512):
        validate.model_args(n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads_batch, n_batch=n_batch,
                            n_ubatch=n_ubatch, n_parallel=n_parallel, rope_freq_base=rope_freq_base,
                            rope_freq_scale=rope_freq_scale, yarn_orig_ctx=yarn_orig_ctx,
                            yarn_ext_factor=yarn_ext_factor, yarn_attn_factor=yarn_attn_factor,
                            yarn_beta_fast=yarn_beta_fast, yarn_beta_slow=yarn_beta_slow, chat_template=chat_template,
                            alias=alias, cache_type_k=cache_type_k, cache_type_v=cache_type_v,
                            rope_scaling=rope_scaling, flash_attn=flash_attn)
        validate.integer(n_probs_max, "n_probs_max", 0, 1 << 20)
        validate.integer(grp_attn_n, "grp_attn_n", 1, 1 << 20)
        validate.integer(grp_attn_w, "grp_attn_w", 1, 1 << 30)
        if not 1 <= n_parallel <= 256:
            raise InvalidRequestError(f"n_parallel must be between 1 and 256, got {n_parallel}")
        if not 0.0 <= slot_prompt_similarity <= 1.0:
            raise InvalidRequestError("slot_prompt_similarity must be between 0 and 1")
        if isinstance(stream_timeout, bool) or not isinstance(stream_timeout, (int, float)) or not stream_timeout > 0:
            raise InvalidRequestError(f"stream_timeout must be a positive number of seconds, got {stream_timeout!r}")
        self.stream_timeout = float(stream_timeout)
        self.n_probs_max = n_probs_max
        self.path = Path(resolve(path_or_name))
        self._gguf = GgufReader(self.path, no_mmap=no_mmap, mlock=mlock)
        self.n_threads = n_threads or min(os.cpu_count() or 1, 8)
        # One parsed file shared by the reader, the weights and the tokenizer.
        self.n_threads_batch = n_threads_batch or self.n_threads
        self._core = _core.Model(str(self.path), n_threads=self.n_threads, n_threads_batch=self.n_threads_batch,
                                 cache_type_k=cache_type_k,
                                 cache_type_v=cache_type_v, file=self._gguf._file,
                                 rope_scaling=rope_scaling, rope_freq_base=rope_freq_base,
                                 rope_freq_scale=rope_freq_scale, yarn_orig_ctx=yarn_orig_ctx,
                                 yarn_ext_factor=yarn_ext_factor, yarn_attn_factor=yarn_attn_factor,
                                 yarn_beta_fast=yarn_beta_fast, yarn_beta_slow=yarn_beta_slow,
                                 flash_attn=flash_attn, deterministic=bool(deterministic))
        self.cache_type_k, self.cache_type_v = cache_type_k.lower(), cache_type_v.lower()
        self.tokenizer = Tokenizer(_core.Tokenizer.from_file(self._gguf._file))
        self.n_parallel = n_parallel
        self.n_batch = n_batch
        self.n_ubatch = max(1, min(n_ubatch, n_batch))
        self.alias = alias or str(self.path)
        self._template = resolve_template(chat_template, self._gguf.get("tokenizer.chat_template"))
        self._vocab = _core.SamplerVocab.from_tokenizer(self.tokenizer._t)
        # n_ctx 0: the training context, or as much of it as fits in half the available memory.
        self._core.start_engine(self._vocab, n_parallel=n_parallel, n_ctx=n_ctx, kv_unified=kv_unified,
                                n_ubatch=self.n_ubatch, context_shift=context_shift,
                                slot_prompt_similarity=slot_prompt_similarity, grp_attn_n=grp_attn_n,
                                grp_attn_w=grp_attn_w)
        self.n_ctx = self._core.n_ctx
        self.n_ctx_slot = self._core.n_ctx_slot
        self._pump = _Pump(self._core)
        # Requests running or queued: id -> (prompt, parsed request), for /slots.
        self._requests: dict[int, tuple[Any, params.CompletionRequest]] = {}
        self._finalizer = weakref.finalize(self, _shutdown, self._core, self._pump)

    def close(self) -> None:
        """Cancel every request and stop the engine (also done when the model is collected)."""
        self._finalizer()

    def __enter__(self) -> Model:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Vocabulary ---------------------------------------------------------------------------
    @property
    def n_vocab(self) -> int:
        return self._core.n_vocab

    @property
    def n_embd(self) -> int:
        return self._core.n_embd

    @property
    def metadata(self) -> dict[str, Any]:
        """The GGUF's metadata as plain Python values (built on first use)."""
        return self._gguf.metadata

    @property
    def chat_template(self) -> str | None:
        """The GGUF's own chat template (None when it has none)."""
        return self._gguf.get("tokenizer.chat_template")

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        return self.tokenizer.tokenize(text, add_special=add_special, parse_special=parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.detokenize(list(ids))

    def token_to_piece(self, token: int) -> bytes:
        return self.tokenizer.token_to_piece(token)

    def apply_chat_template(self, messages: Any, add_generation_prompt: bool = True) -> str:
        bos = self.tokenizer.token_to_piece(self.tokenizer.bos_id).decode("utf-8", "replace") \
            if self.tokenizer.bos_id is not None else ""
        eos = self.tokenizer.token_to_piece(self.tokenizer.eos_id).decode("utf-8", "replace") \
            if self.tokenizer.eos_id is not None else ""
        return apply_template(self._template, messages, add_generation_prompt=add_generation_prompt,
                              bos_token=bos, eos_token=eos)

    # Generation ---------------------------------------------------------------------------
    def _prompt_ids(self, req: params.CompletionRequest) -> list[int]:
        if isinstance(req.prompt, str):
            return self.tokenize(req.prompt, add_special=req.add_special, parse_special=True)
        bad = [t for t in req.prompt if not 0 <= t < self.n_vocab]
        if bad:
            raise InvalidRequestError(f"prompt token id {bad[0]} out of range (vocab {self.n_vocab})")
        return list(req.prompt)

    def _start(self, prompt: Any, options: dict[str, Any], chan: _Channel) -> tuple[int, params.CompletionRequest]:
        unknown = sorted(k for k in options if k not in _OPTIONS)
        if unknown:
            raise InvalidRequestError(f"unknown option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}")
        req = params.parse({"prompt": prompt, **options}, tokenize=lambda s: self.tokenize(s),
                           n_vocab=self.n_vocab, n_ctx=self.n_ctx_slot, n_probs_max=self.n_probs_max,
                           tokenize_prompt=lambda s, special: self.tokenize(s, add_special=special))
        id_slot = options.get("id_slot", options.get("slot_id", -1))
        if id_slot is None:
            id_slot = -1
        if isinstance(id_slot, bool) or not isinstance(id_slot, int):
            raise InvalidRequestError('"id_slot" must be an integer')
        ids = self._prompt_ids(req)
        rid = self._pump.submit(
            lambda: self._core.submit_generate(ids, req.sampling, n_predict=req.n_predict, stop=req.stop,
                                               cache_prompt=req.cache_prompt, n_keep=req.n_keep,
                                               post_sampling_probs=req.post_sampling_probs, id_slot=id_slot),
            chan)
        self._requests[rid] = (req.prompt, req)
        return rid, req

    def complete(self, prompt: str | list[int], **options: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """llama.cpp's /completion: options as keyword arguments, the response as a dict.

        With `stream=True`, an iterator of partial results (`content` is the new text, `stop`
        false), ending with the full final object (`stop` true). Closing the iterator (or
        dropping it) cancels the generation at the engine's next step."""
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        chan = _Channel(self._core, q.put, self.stream_timeout)
        rid, req = self._start(prompt, options, chan)
        events = self._sync_stream(rid, req, chan, q)
        if req.stream:
            return events
        final: dict[str, Any] = {}
        for ev in events:
            final = ev
        return final

    def _sync_stream(self, rid: int, req: params.CompletionRequest, chan: _Channel,
                     q: queue.SimpleQueue[Any]) -> Iterator[dict[str, Any]]:
        shaper = _Shaper(self, req, req.prompt)
        finished = False
        try:
            while not finished:
                evs = q.get()
                chan.took(len(evs))
                for kind, payload in evs:
                    finished = finished or kind in _FINAL
                    yield from shaper.feed(kind, payload)
        finally:
            self._requests.pop(rid, None)
            if not finished:
                self._core.cancel(rid)

    async def acomplete(self, prompt: str | list[int], **options: Any) -> AsyncIterator[dict[str, Any]]:
        """`complete(..., stream=True)` for asyncio: yields the partial chunks, then the final object.

        Events arrive through the model's pump thread, one wake-up of the event loop per engine
        step. Closing the iterator (or the task being cancelled) cancels the generation."""
        loop = asyncio.get_running_loop()
        aq: asyncio.Queue[Any] = asyncio.Queue()
        chan = _Channel(self._core, lambda evs: loop.call_soon_threadsafe(aq.put_nowait, evs), self.stream_timeout)
        rid, req = self._start(prompt, {**options, "stream": True}, chan)
        shaper = _Shaper(self, req, req.prompt)
        finished = False
        try:
            while not finished:
                evs = await aq.get()
                chan.took(len(evs))
                for kind, payload in evs:
                    finished = finished or kind in _FINAL
                    for chunk in shaper.feed(kind, payload):
                        yield chunk
        finally:
            self._requests.pop(rid, None)
            if not finished:
                self._core.cancel(rid)

    def chat(self, messages: Any, **options: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """Render `messages` with the chat template and complete the prompt (the template adds
        the BOS token itself when it has one, so the prompt's own special tokens are not added)."""
        return self.complete(self.apply_chat_template(messages), **{"add_special": False, **options})

    def create_chat_completion(self, messages: Any, **options: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """OpenAI's chat completion object (or its chunks with stream=True), as /v1/chat/completions."""
        from rllama import openai

        return openai.create_chat_completion(self, messages, **options)

    def create_completion(self, prompt: str | list[int], **options: Any) -> dict[str, Any] | Iterator[dict[str, Any]]:
        """OpenAI's text completion object (or its chunks with stream=True), as /v1/completions."""
        from rllama import openai

        return openai.create_completion(self, prompt, **options)

    # Slots --------------------------------------------------------------------------------
    def _call(self, start: Any) -> Any:
        """Run one engine job to its end and return its result (raising its error)."""
        q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._pump.submit(start, _Channel(self._core, q.put, self.stream_timeout))
        while True:
            for kind, payload in q.get():
                if kind == "error":
                    raise payload
                if kind in _FINAL:
                    return payload

    def _check_slot(self, id_slot: int) -> int:
        if isinstance(id_slot, bool) or not isinstance(id_slot, int) or not 0 <= id_slot < self.n_parallel:
            raise InvalidRequestError(f"slot {id_slot!r} does not exist (0 to {self.n_parallel - 1})")
        return id_slot

    def slot_save(self, id_slot: int, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Write slot `id_slot`'s tokens and KV cache to `path` (the slot must be idle)."""
        r = self._call(lambda: self._core.submit_slot_save(self._check_slot(id_slot), str(path)))
        return {"n_saved": r["n_tokens"], "n_written": r["n_bytes"], "save_ms": r["ms"]}

    def slot_restore(self, id_slot: int, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Load a file written by `slot_save` into slot `id_slot` (same model and cache types)."""
        r = self._call(lambda: self._core.submit_slot_restore(self._check_slot(id_slot), str(path)))
        return {"n_restored": r["n_tokens"], "n_read": r["n_bytes"], "restore_ms": r["ms"]}

    def slot_erase(self, id_slot: int) -> dict[str, Any]:
        """Forget slot `id_slot`'s cached tokens."""
        r = self._call(lambda: self._core.submit_slot_erase(self._check_slot(id_slot)))
        return {"n_erased": r["n_tokens"]}

    def slots(self) -> list[dict[str, Any]]:
        """Each slot's state, shaped like llama.cpp's GET /slots entries."""
        out = []
        for st in self._core.stats()["slots"]:
            rid = st["id_task"]
            prompt, req = self._requests.get(rid, (None, None)) if rid is not None else (None, None)
            entry: dict[str, Any] = {
                "id": st["id"],
                "id_task": rid if rid is not None else -1,
                "n_ctx": st["n_ctx"],
                "n_past": st["n_past"],
                "speculative": False,
                "is_processing": rid is not None,
                "state": 1 if rid is not None else 0,
                "prompt": prompt if isinstance(prompt, str) else ("" if prompt is None else self.detokenize(prompt)),
                "next_token": {
                    "has_next_token": rid is not None,
                    "has_new_line": False,
                    "n_remain": st["n_remain"],
                    "n_decoded": st["n_decoded"],
                    "stopping_word": "",
                },
            }
            if req is not None:
                entry["params"] = params.generation_settings(req, n_ctx=self.n_ctx_slot, model=self.alias,
                                                             seed=req.sampling.to_dict()["seed"])
            out.append(entry)
        return out

    def metrics(self) -> dict[str, Any]:
        """The engine's counters (llama.cpp's /metrics figures)."""
        s = dict(self._core.stats())
        s.pop("slots")
        cells = s.pop("kv_cache_cells")
        s["kv_cache_usage_ratio"] = s["kv_cache_tokens"] / cells if cells else 0.0
        return s

    # Embeddings and perplexity ---------------------------------------------------------------
    def logits(self, ids: Sequence[int], all_positions: bool = False, first: int = 0) -> np.ndarray:
        """Logits for `ids` evaluated from position 0: the last position, or every position from
        `first` on (rows in position order)."""
        ids = list(ids)
        if not ids:
            raise InvalidRequestError("cannot evaluate an empty token list")
        raw = self._call(lambda: self._core.submit_logits(ids, n_ctx=self.n_ctx, n_batch=self.n_ubatch,
                                                          all_logits=all_positions,
                                                          logits_from=first))[0]
        out = np.frombuffer(raw, dtype=np.float32)
        return out.reshape(-1, self.n_vocab) if all_positions else out

    def embed(self, texts: str | Sequence[str], pooling: str = "mean", normalize: bool = True) -> np.ndarray:
        """Embeddings of `texts` from the final-normed hidden states (all inputs in one engine job).

        pooling: "mean", "cls" (first token), "last", or "none" (every token; returns a list of
        arrays). Vectors are L2-normalized like llama.cpp's server unless `normalize` is False."""
        if pooling not in ("mean", "cls", "last", "none"):
            raise InvalidRequestError(f"unknown pooling {pooling!r} (mean, cls, last, none)")
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        if not items:
            raise InvalidRequestError("nothing to embed: the input list is empty")
        inputs = []
        for text in items:
            if not isinstance(text, str):
                raise InvalidRequestError(f"embedding inputs must be strings, got {type(text).__name__}")
            ids = self.tokenize(text, add_special=True, parse_special=True)
            if not ids:
                raise InvalidRequestError("cannot embed an empty input")
            if len(ids) > self.n_ctx_slot:
                raise InvalidRequestError(f"input is {len(ids)} tokens, more than the context size {self.n_ctx_slot}")
            inputs.append(ids)
        raws = self._call(lambda: self._core.submit_hidden(inputs, n_batch=self.n_ubatch))
        out = []
        for ids, raw in zip(inputs, raws):
            h = np.frombuffer(raw, dtype=np.float32).reshape(len(ids), -1)
            v = h.mean(0) if pooling == "mean" else h[0] if pooling == "cls" else h[-1] if pooling == "last" else h
            if normalize:
                norm = np.linalg.norm(v, axis=-1, keepdims=True)
                v = v / np.where(norm > 0, norm, 1.0)
            out.append(v.astype(np.float32))
        if pooling == "none":
            return out[0] if single else out
        return out[0] if single else np.stack(out)

    def decode_bench(self, ids: Sequence[int]) -> None:
        """llama-bench's tg test: decode `ids` one at a time from position 0."""
        ids = list(ids)
        self._call(lambda: self._core.submit_decode_bench(ids))

    def perplexity(self, text: str, n_ctx: int = 512, n_chunks: int = -1,
                   progress: Any = None) -> dict[str, Any]:
        """llama.cpp's perplexity: split the tokenized text into chunks of `n_ctx` tokens, score the
        second half of each chunk (first token replaced by BOS when the model adds one)."""
        validate.perplexity_args(n_ctx, n_chunks)
        tokens = self.tokenize(text, add_special=True, parse_special=False)
        if len(tokens) < 2 * n_ctx:
            raise InvalidRequestError(f"need at least {2 * n_ctx} tokens for a context of {n_ctx}, got {len(tokens)}")
        n_chunk = len(tokens) // n_ctx
        if n_chunks >= 0:
            n_chunk = min(n_chunk, n_chunks)
        add_bos = self.tokenizer.add_bos and self.tokenizer.bos_id is not None
        first = n_ctx // 2
        nll, count, running = 0.0, 0, []
        for i in range(n_chunk):
            chunk = list(tokens[i * n_ctx:(i + 1) * n_ctx])
            if add_bos:
                chunk[0] = self.tokenizer.bos_id
            lg = self.logits(chunk, all_positions=True, first=first).astype(np.float64)[:n_ctx - 1 - first]
            lg -= lg.max(-1, keepdims=True)
            lse = np.log(np.exp(lg).sum(-1))
            targets = np.array(tokens[i * n_ctx + first + 1:(i + 1) * n_ctx])
            nll += float((lse - lg[np.arange(len(targets)), targets]).sum())
            count += len(targets)
            running.append(float(np.exp(nll / count)))
            if progress:
                progress(i + 1, n_chunk, running[-1])
        return {"ppl": running[-1], "chunks": running, "n_ctx": n_ctx, "n_tokens": len(tokens)}


class _Shaper:
    """Turns one generation's engine events into /completion chunks and the final object."""

    def __init__(self, model: Model, req: params.CompletionRequest, prompt: Any):
        self.m, self.req, self.prompt = model, req, prompt
        self.probs: list[dict[str, Any]] = []

    def _piece(self, t: int) -> str:
        return self.m.tokenizer.token_to_piece(t).decode("utf-8", "replace")

    def feed(self, kind: str, payload: Any) -> Iterator[dict[str, Any]]:
        req = self.req
        if kind == "token":
            token, text, logprob, top = payload
            entry = None
            if req.n_probs > 0 and token != 0xFFFFFFFF:
                entry = {"id": token, "content": self._piece(token), "logprob": logprob,
                         "probs": [{"id": t, "tok_str": self._piece(t), "prob": float(np.exp(lp))} for t, lp in top]}
                self.probs.append(entry)
            if req.stream:
                chunk: dict[str, Any] = {"content": text, "stop": False}
                if entry is not None:
                    chunk["completion_probabilities"] = [entry]
                if req.return_tokens and token != 0xFFFFFFFF:
                    chunk["tokens"] = [token]
                yield chunk
        elif kind == "done":
            yield self.final(payload)
        elif kind == "error":
            raise payload
        else:
            raise RllamaError(f"unexpected engine event {kind!r}")

    def final(self, d: dict[str, Any]) -> dict[str, Any]:
        req, m = self.req, self.m
        n_gen = len(d["tokens"])
        prompt_ms, gen_ms = d["prompt_ms"], d["gen_ms"]
        n_eval = d["n_prompt_evaluated"]
        out: dict[str, Any] = {
            "content": "" if req.stream else d["content"],
            "id_slot": d["id_slot"],
            "stop": True,
            "model": m.alias,
            "tokens_predicted": n_gen,
            "tokens_evaluated": d["n_prompt"],
            "generation_settings": params.generation_settings(req, n_ctx=m.n_ctx_slot, model=m.alias,
                                                              seed=d["seed"]),
            "prompt": self.prompt if isinstance(self.prompt, str) else m.detokenize(self.prompt),
            "has_new_line": "\n" in d["content"],
            "truncated": d["truncated"],
            "stop_type": {"eos": "eos", "limit": "limit", "word": "word"}.get(d["stop_type"], "none"),
            "stopped_eos": d["stop_type"] == "eos",
            "stopped_limit": d["stop_type"] == "limit",
            "stopped_word": d["stop_type"] == "word",
            "stopping_word": d["stopping_word"],
            "tokens_cached": d["n_cached"],
            "timings": {
                "prompt_n": n_eval,
                "prompt_ms": prompt_ms,
                "prompt_per_token_ms": prompt_ms / n_eval if n_eval else 0.0,
                "prompt_per_second": 1e3 * n_eval / prompt_ms if prompt_ms > 0 else 0.0,
                "predicted_n": n_gen,
                "predicted_ms": gen_ms,
                "predicted_per_token_ms": gen_ms / n_gen if n_gen else 0.0,
                "predicted_per_second": 1e3 * n_gen / gen_ms if gen_ms > 0 else 0.0,
            },
        }
        if req.n_probs > 0 and not req.stream:
            out["completion_probabilities"] = self.probs
        if req.return_tokens:
            out["tokens"] = list(d["tokens"])
        return out
