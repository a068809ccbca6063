"""Server-sent events: `data: {json}` per chunk, the stream primed before the headers go out.

A request whose options are bad fails before its first chunk; priming the iterator turns that
into an ordinary JSON error response instead of a 200 stream that carries an error. Closing the
response (the client went away, or shutdown) closes the iterator, which cancels the generation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from quart import Response

from rllama.server.errors import from_exception

log = logging.getLogger("rllama.server")

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n\n"


async def prime(agen: AsyncIterator[Any]) -> tuple[Any, bool]:
    """The first item of `agen` (errors raised here, before any byte is sent) and whether it had one."""
    try:
        return await agen.__anext__(), True
    except StopAsyncIteration:
        return None, False
    except BaseException:
        await agen.aclose()
        raise


async def sse_response(agen: AsyncIterator[Any], shape: Callable[[Any], list[Any]], *,
                       done: bytes | None = None, error_prefix: bytes = b"data: ") -> Response:
    """A streaming response: each item of `agen` becomes the SSE events of `shape(item)`."""
    first, has_first = await prime(agen)

    async def body() -> AsyncIterator[bytes]:
        try:
            if has_first:
                for ev in shape(first):
                    yield sse(ev)
                async for item in agen:
                    for ev in shape(item):
                        yield sse(ev)
            if done is not None:
                yield done
        except Exception as e:  # noqa: BLE001 - the stream has started: report in-band, like llama.cpp
            err = from_exception(e)
            log.warning("stream error: %s", err.message)
            yield error_prefix + err.json().encode("utf-8") + b"\n\n"
        finally:
            await agen.aclose()

    resp = Response(body(), mimetype="text/event-stream", headers=HEADERS)
    resp.timeout = None  # a stream lasts as long as its generation
    return resp
