"""The server's handle on the model: generation as async iterators, slot and metric views.

With an engine that schedules its own slots (`Model.n_parallel` exists) requests go straight to
`Model.acomplete` and the engine's `slots()` / `metrics()` are reported as they are. With the
older single-sequence model one request generates at a time: a lock serializes them, a thread
per request iterates `Model.complete(stream=True)` and closes it on cancel (so the lock is only
released once the generation has really stopped), and the slot and metric views are built from
what this server saw pass through it.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

_DONE = object()


@dataclass
class _SlotView:
    """What the server knows of the one slot of a single-sequence model."""

    id_task: int = -1
    prompt: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    n_decoded: int = 0
    n_predict: int = -1
    processing: bool = False
    last_final: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Totals:
    prompt_tokens: int = 0
    prompt_seconds: float = 0.0
    tokens_predicted: int = 0
    tokens_predicted_seconds: float = 0.0
    n_decode: int = 0


class Backend:
    def __init__(self, model: Any):
        self.model = model
        self.engine_slots = hasattr(model, "n_parallel")
        self.n_parallel = int(getattr(model, "n_parallel", 1) or 1)
        self._lock = threading.Lock()  # single-sequence models only
        self._slots_free: asyncio.Semaphore | None = None  # engine models
        self._waiting = 0
        self._processing = 0
        self._task_ids = itertools.count()
        self._slot = _SlotView()
        self.totals = _Totals()

    # ---------------------------------------------------------------------------------------
    @property
    def n_ctx_slot(self) -> int:
        return int(getattr(self.model, "n_ctx_slot", 0) or self.model.n_ctx // self.n_parallel)

    def processing(self) -> int:
        if self.engine_slots and hasattr(self.model, "slots"):
            return sum(1 for s in self.model.slots() if s.get("is_processing"))
        return self._processing

    def slots(self) -> list[dict[str, Any]]:
        if self.engine_slots and hasattr(self.model, "slots"):
            return list(self.model.slots())
        s = self._slot
        final = s.last_final
        return [{
            "id": 0,
            "id_task": s.id_task,
            "n_ctx": self.n_ctx_slot,
            "is_processing": s.processing,
            "prompt": s.prompt,
            "params": s.params,
            "next_token": {
                "has_next_token": s.processing,
                "n_remain": (s.n_predict - s.n_decoded) if s.n_predict >= 0 else -1,
                "n_decoded": s.n_decoded,
                "stopped_eos": bool(final.get("stopped_eos", False)),
                "stopped_limit": bool(final.get("stopped_limit", False)),
                "stopped_word": bool(final.get("stopped_word", False)),
                "stopping_word": final.get("stopping_word", ""),
            },
        }]

    def metrics(self) -> dict[str, Any]:
        """The engine's counters, or (single-sequence models) this server's own tally."""
        if hasattr(self.model, "metrics"):
            m = dict(self.model.metrics())
            m["requests_deferred"] = int(m.get("requests_deferred", 0)) + self._waiting
            return m
        t = self.totals
        return {
            "prompt_tokens_total": t.prompt_tokens,
            "prompt_seconds_total": t.prompt_seconds,
            "tokens_predicted_total": t.tokens_predicted,
            "tokens_predicted_seconds_total": t.tokens_predicted_seconds,
            "n_decode_total": t.n_decode,
            "requests_processing": self._processing,
            "requests_deferred": self._waiting,
        }

    # ---------------------------------------------------------------------------------------
    def _account(self, final: dict[str, Any]) -> None:
        tm = final.get("timings") or {}
        t = self.totals
        t.prompt_tokens += int(tm.get("prompt_n", 0))
        t.prompt_seconds += float(tm.get("prompt_ms", 0.0)) / 1e3
        t.tokens_predicted += int(tm.get("predicted_n", 0))
        t.tokens_predicted_seconds += float(tm.get("predicted_ms", 0.0)) / 1e3
        # One decode per generated token plus at least one for the prompt.
        t.n_decode += int(tm.get("predicted_n", 0)) + (1 if tm.get("prompt_n", 0) else 0)

    async def stream(self, prompt: Any, opts: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The chunks of one generation then its final object; closing the iterator cancels it."""
        opts = {**opts, "stream": True}
        if self.engine_slots:
            # At most n_parallel requests are handed to the engine at once; the rest wait here
            # (llama.cpp's deferred requests). The engine queues too, but a queued request must
            # not depend on it while its deferral path is young.
            if self._slots_free is None:
                self._slots_free = asyncio.Semaphore(self.n_parallel)
            self._waiting += 1
            try:
                await self._slots_free.acquire()
            finally:
                self._waiting -= 1
            agen = self.model.acomplete(prompt, **opts)
            self._processing += 1
            try:
                async for chunk in agen:
                    if chunk.get("stop") and not hasattr(self.model, "metrics"):
                        self._account(chunk)
                    yield chunk
            finally:
                self._processing -= 1
                try:
                    await agen.aclose()
                finally:
                    self._slots_free.release()
            return
        async for chunk in self._stream_serialized(prompt, opts):
            yield chunk

    async def _stream_serialized(self, prompt: Any, opts: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        slot = self._slot
        self._waiting += 1

        def put(item: Any) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:  # the loop is gone (shutdown)
                pass

        def run() -> None:
            with self._lock:
                self._waiting -= 1
                self._processing += 1
                slot.processing, slot.n_decoded = True, 0
                slot.id_task = next(self._task_ids)
                slot.prompt = prompt if isinstance(prompt, str) else ""
                slot.n_predict = int(opts.get("n_predict", opts.get("max_tokens", -1)) or -1)
                it = None
                try:
                    if cancel.is_set():
                        return
                    it = self.model.complete(prompt, **opts)
                    for chunk in it:
                        if cancel.is_set():
                            break
                        if chunk.get("stop"):
                            slot.last_final = chunk
                            slot.params = chunk.get("generation_settings", {})
                            self._account(chunk)
                        else:
                            slot.n_decoded += 1
                        put(chunk)
                except BaseException as e:  # noqa: BLE001 - handed to the consumer
                    put(e)
                finally:
                    if it is not None and hasattr(it, "close"):
                        it.close()  # same thread: runs the generator's cleanup, cancels the engine
                    slot.processing = False
                    self._processing -= 1
                    put(_DONE)

        thread = threading.Thread(target=run, name="rllama-generate", daemon=True)
        thread.start()
        try:
            while True:
                item = await q.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            # The thread stops at its next token (a request still waiting for the lock, as soon as
            # it gets it) and releases the lock itself.
            cancel.set()

    async def complete(self, prompt: Any, opts: dict[str, Any]) -> dict[str, Any]:
        final: dict[str, Any] = {}
        parts: list[str] = []
        probs: list[Any] = []
        tokens: list[int] = []
        async for chunk in self.stream(prompt, opts):
            if chunk.get("stop"):
                final = dict(chunk)
            else:
                parts.append(chunk.get("content", ""))
                probs.extend(chunk.get("completion_probabilities", []))
                tokens.extend(chunk.get("tokens", []))
        # The streamed final object leaves `content` empty; a non-streamed answer carries it all.
        final["content"] = "".join(parts)
        final.setdefault("generation_settings", {})["stream"] = bool(opts.get("stream", False))
        if probs or opts.get("n_probs"):
            final["completion_probabilities"] = probs
        if opts.get("return_tokens") and "tokens" not in final:
            final["tokens"] = tokens
        return final

    async def embed(self, texts: list[str], pooling: str, normalize: bool = True) -> Any:
        def run() -> Any:
            if self.engine_slots:
                return self.model.embed(texts, pooling=pooling, normalize=normalize)
            with self._lock:
                return self.model.embed(texts, pooling=pooling, normalize=normalize)

        return await asyncio.to_thread(run)

    async def call(self, fn: Any, *args: Any) -> Any:
        """A blocking model call (slot save/restore/erase) off the event loop."""
        def run() -> Any:
            if self.engine_slots:
                return fn(*args)
            with self._lock:
                return fn(*args)

        return await asyncio.to_thread(run)
