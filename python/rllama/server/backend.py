"""The server's handle on the model: generation as async iterators over `Model.acomplete`, the
engine's slot and metric views, and blocking model calls moved off the event loop.

At most `n_parallel` generations are handed to the engine at once; the rest wait here, counted
as deferred (the engine has its own FIFO queue as well; this one keeps a request that is still
waiting free of any engine state, so a client that goes away costs nothing).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any


class Backend:
    def __init__(self, model: Any):
        self.model = model
        self.n_parallel = int(model.n_parallel)
        self._slots_free: asyncio.Semaphore | None = None
        self._waiting = 0

    @property
    def n_ctx_slot(self) -> int:
        return int(self.model.n_ctx_slot)

    def processing(self) -> int:
        return sum(1 for s in self.model.slots() if s.get("is_processing"))

    def slots(self) -> list[dict[str, Any]]:
        return list(self.model.slots())

    def metrics(self) -> dict[str, Any]:
        m = dict(self.model.metrics())
        m["requests_deferred"] = int(m.get("requests_deferred", 0)) + self._waiting
        return m

    async def stream(self, prompt: Any, opts: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The chunks of one generation then its final object; closing the iterator cancels it."""
        if self._slots_free is None:
            self._slots_free = asyncio.Semaphore(self.n_parallel)
        self._waiting += 1
        try:
            await self._slots_free.acquire()
        finally:
            self._waiting -= 1
        agen = self.model.acomplete(prompt, **{**opts, "stream": True})
        try:
            async for chunk in agen:
                yield chunk
        finally:
            try:
                await agen.aclose()
            finally:
                self._slots_free.release()

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
        return await asyncio.to_thread(self.model.embed, texts, pooling=pooling, normalize=normalize)

    async def call(self, fn: Any, *args: Any) -> Any:
        """A blocking model call (slot save/restore/erase) off the event loop."""
        return await asyncio.to_thread(fn, *args)
