"""OpenAI request and response shapes over /completion: one module for the library and the server.

`parse_chat` / `parse_completion` turn an OpenAI request (chat messages or a text prompt, plus
OpenAI's option names and llama.cpp's extras) into a prompt and /completion options;
`ChatShaper` / `CompletionShaper` turn /completion results (the final object, or the streamed
chunks) into OpenAI's `chat.completion`, `chat.completion.chunk` and `text_completion` objects.
`Model.create_chat_completion` / `Model.create_completion` (in-process) and the /v1 routes (over
HTTP) are built from these same pieces, so both front doors answer alike.
"""

from __future__ import annotations

import base64
import math
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rllama import sampling
from rllama.errors import InvalidRequestError

# The llama.cpp /completion options (sampling and the rest) that the OpenAI routes also accept.
LLAMA_OPTIONS = frozenset(sampling.DEFAULTS) | {
    "n_predict", "stop", "cache_prompt", "n_keep", "return_tokens", "post_sampling_probs", "add_special",
    "json_schema", "response_format",
}
COMPLETION_OPTIONS = LLAMA_OPTIONS | {"max_tokens", "stream"}

MAX_TOP_LOGPROBS = 20


def model_name(model: Any) -> str:
    """The name OpenAI responses carry: the alias, else the model file's name."""
    alias = getattr(model, "alias", None)
    path = getattr(model, "path", None)
    if alias and (path is None or alias != str(path)):
        return str(alias)
    return getattr(path, "name", None) or str(alias or "model")


def _bad(msg: str) -> InvalidRequestError:
    return InvalidRequestError(msg)


def _opt_int(body: Mapping[str, Any], name: str, lo: int, hi: int) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise _bad(f'"{name}" must be an integer')
    if not lo <= v <= hi:
        raise _bad(f'"{name}" must be between {lo} and {hi}, got {v}')
    return int(v)


def _opt_bool(body: Mapping[str, Any], name: str) -> bool | None:
    v = body.get(name)
    if v is not None and not isinstance(v, bool):
        raise _bad(f'"{name}" must be a boolean')
    return v


def _common(body: Mapping[str, Any], default_n_predict: int) -> tuple[dict[str, Any], bool, bool]:
    """Options shared by chat and text completions: (options, stream, include_usage)."""
    if not isinstance(body, Mapping):
        raise _bad("the request must be a JSON object")
    n = _opt_int(body, "n", 1, 2**31 - 1)
    if n is not None and n != 1:
        raise _bad('"n" must be 1: this server returns one choice per request')
    opts = {k: v for k, v in body.items() if k in LLAMA_OPTIONS}
    n_predict = _opt_int(body, "max_completion_tokens", -1, 2**31 - 1)
    if n_predict is None:
        n_predict = _opt_int(body, "max_tokens", -1, 2**31 - 1)
    if n_predict is None:
        n_predict = _opt_int(body, "n_predict", -1, 2**31 - 1)
    opts["n_predict"] = default_n_predict if n_predict is None else n_predict
    stream = bool(_opt_bool(body, "stream"))
    so = body.get("stream_options")
    if so is not None and not isinstance(so, Mapping):
        raise _bad('"stream_options" must be an object')
    include_usage = False
    if so:
        include_usage = bool(_opt_bool(so, "include_usage"))
    return opts, stream, include_usage


@dataclass
class OpenAIRequest:
    prompt: str | list[int]
    options: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    id: str = field(default_factory=lambda: "")
    created: int = field(default_factory=lambda: int(time.time()))


def parse_chat(body: Mapping[str, Any], model: Any, *, default_n_predict: int = -1) -> OpenAIRequest:
    """An OpenAI chat request: messages rendered by the model's chat template, options mapped."""
    if not isinstance(body, Mapping):
        raise _bad("the request must be a JSON object")
    if "messages" not in body:
        raise _bad('"messages" is required')
    tools = body.get("tools") or body.get("functions")
    if tools:
        raise _bad('"tools" / "functions" (tool calling) is not supported by this server')
    opts, stream, include_usage = _common(body, default_n_predict)
    logprobs = bool(_opt_bool(body, "logprobs"))
    top = _opt_int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if top is not None and not logprobs:
        raise _bad('"top_logprobs" requires "logprobs": true')
    if logprobs:
        opts["n_probs"] = max(1, top or 0)
    prompt = model.apply_chat_template(body["messages"], add_generation_prompt=True)
    return OpenAIRequest(prompt=prompt, options=opts, stream=stream, include_usage=include_usage,
                         logprobs=logprobs, top_logprobs=top or 0, id="chatcmpl-" + uuid.uuid4().hex)


def parse_completion(body: Mapping[str, Any], *, default_n_predict: int = -1) -> OpenAIRequest:
    """An OpenAI text-completion request (prompt: a string, one-string list, or token ids)."""
    if not isinstance(body, Mapping):
        raise _bad("the request must be a JSON object")
    if "prompt" not in body:
        raise _bad('"prompt" is required')
    prompt = body["prompt"]
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], list):
        prompt = prompt[0]  # OpenAI's array of token arrays, with one prompt in it
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        if len(prompt) != 1:
            raise _bad('"prompt": one prompt per request (an array of several strings is not supported)')
        prompt = prompt[0]
    if not isinstance(prompt, str) and not (
            isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool)
                                                        for t in prompt)):
        raise _bad('"prompt" must be a string or an array of token ids')
    if body.get("echo"):
        raise _bad('"echo" is not supported')
    if body.get("suffix"):
        raise _bad('"suffix" is not supported here: use /infill')
    best_of = _opt_int(body, "best_of", 1, 2**31 - 1)
    if best_of is not None and best_of != 1:
        raise _bad('"best_of" must be 1')
    opts, stream, include_usage = _common(body, default_n_predict)
    lp = body.get("logprobs")
    top = 0
    if lp is not None and lp is not False:
        top = _opt_int(body, "logprobs", 0, MAX_TOP_LOGPROBS) or 0
        if top:
            opts["n_probs"] = top
    return OpenAIRequest(prompt=prompt, options=opts, stream=stream, include_usage=include_usage,
                         logprobs=top > 0, top_logprobs=top, id="cmpl-" + uuid.uuid4().hex)


# Responses ---------------------------------------------------------------------------------------
def finish_reason(final: Mapping[str, Any]) -> str:
    if final.get("stopped_limit") or final.get("stop_type") == "limit" or final.get("truncated"):
        return "length"
    return "stop"


def usage(final: Mapping[str, Any]) -> dict[str, int]:
    p, c = int(final.get("tokens_evaluated", 0)), int(final.get("tokens_predicted", 0))
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _logprob_of(x: Mapping[str, Any]) -> float:
    if "logprob" in x:
        return float(x["logprob"])
    p = float(x.get("prob", 0.0))
    return math.log(p) if p > 0 else -9999.0  # OpenAI's value for "very unlikely"


def _top_entries(entry: Mapping[str, Any]) -> list[tuple[str, float]]:
    """(token text, logprob) of an entry's alternatives, either of llama.cpp's two formats."""
    if "top_logprobs" in entry:
        return [(t.get("token", ""), _logprob_of(t)) for t in entry["top_logprobs"]]
    return [(t.get("tok_str", ""), _logprob_of(t)) for t in entry.get("probs", [])]


def _chosen(entry: Mapping[str, Any]) -> tuple[str, float]:
    text = entry.get("token", entry.get("content", ""))
    if "logprob" in entry:
        return text, float(entry["logprob"])
    for t, lp in _top_entries(entry):
        if t == text:
            return text, lp
    return text, -9999.0


def chat_logprobs(entries: Sequence[Mapping[str, Any]], top_n: int) -> dict[str, Any]:
    content = []
    for e in entries:
        tok, lp = _chosen(e)
        content.append({
            "token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8")),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode("utf-8"))}
                             for t, v in _top_entries(e)[:top_n]],
        })
    return {"content": content}


def completion_logprobs(entries: Sequence[Mapping[str, Any]], top_n: int, offset: int = 0) -> dict[str, Any]:
    tokens, lps, tops, offsets = [], [], [], []
    for e in entries:
        tok, lp = _chosen(e)
        tokens.append(tok)
        lps.append(lp)
        tops.append(dict(_top_entries(e)[:top_n]))
        offsets.append(offset)
        offset += len(tok)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}


class ChatShaper:
    """/completion results -> `chat.completion` and `chat.completion.chunk` objects."""

    object_name = "chat.completion"

    def __init__(self, req: OpenAIRequest, model: str):
        self.req = req
        self.model = model

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.req.id, "object": obj, "created": self.req.created, "model": self.model,
                "system_fingerprint": "rllama"}

    def response(self, final: Mapping[str, Any]) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": final.get("content", "")},
            "finish_reason": finish_reason(final),
            "logprobs": chat_logprobs(final.get("completion_probabilities", []), self.req.top_logprobs)
            if self.req.logprobs else None,
        }
        out = self._base("chat.completion")
        out.update(choices=[choice], usage=usage(final))
        if "timings" in final:
            out["timings"] = final["timings"]
        return out

    def _chunk(self, delta: dict[str, Any], finish: str | None, logprobs: Any = None) -> dict[str, Any]:
        out = self._base("chat.completion.chunk")
        out["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}]
        return out

    def start(self) -> dict[str, Any]:
        return self._chunk({"role": "assistant", "content": None}, None)

    def chunk(self, c: Mapping[str, Any]) -> dict[str, Any] | None:
        text = c.get("content", "")
        probs = c.get("completion_probabilities")
        if not text and not probs:
            return None
        lp = chat_logprobs(probs or [], self.req.top_logprobs) if self.req.logprobs else None
        return self._chunk({"content": text}, None, lp)

    def end(self, final: Mapping[str, Any]) -> list[dict[str, Any]]:
        last = self._chunk({}, finish_reason(final))
        if "timings" in final:
            last["timings"] = final["timings"]
        out = [last]
        if self.req.include_usage:
            u = self._base("chat.completion.chunk")
            u.update(choices=[], usage=usage(final))
            out.append(u)
        return out


class CompletionShaper(ChatShaper):
    """/completion results -> `text_completion` objects (the stream's chunks share the name)."""

    def __init__(self, req: OpenAIRequest, model: str):
        super().__init__(req, model)
        self._offset = 0

    def response(self, final: Mapping[str, Any]) -> dict[str, Any]:
        choice = {
            "text": final.get("content", ""), "index": 0,
            "logprobs": completion_logprobs(final.get("completion_probabilities", []), self.req.top_logprobs)
            if self.req.logprobs else None,
            "finish_reason": finish_reason(final),
        }
        out = self._base("text_completion")
        out.update(choices=[choice], usage=usage(final))
        if "timings" in final:
            out["timings"] = final["timings"]
        return out

    def start(self) -> None:
        return None

    def _tc(self, text: str, finish: str | None, logprobs: Any = None) -> dict[str, Any]:
        out = self._base("text_completion")
        out["choices"] = [{"text": text, "index": 0, "logprobs": logprobs, "finish_reason": finish}]
        return out

    def chunk(self, c: Mapping[str, Any]) -> dict[str, Any] | None:
        text = c.get("content", "")
        probs = c.get("completion_probabilities")
        if not text and not probs:
            return None
        lp = None
        if self.req.logprobs:
            lp = completion_logprobs(probs or [], self.req.top_logprobs, self._offset)
        self._offset += len(text)
        return self._tc(text, None, lp)

    def end(self, final: Mapping[str, Any]) -> list[dict[str, Any]]:
        last = self._tc("", finish_reason(final))
        if "timings" in final:
            last["timings"] = final["timings"]
        out = [last]
        if self.req.include_usage:
            u = self._base("text_completion")
            u.update(choices=[], usage=usage(final))
            out.append(u)
        return out


def embeddings_response(vectors: Sequence[Any], model: str, n_tokens: int,
                        encoding_format: str = "float") -> dict[str, Any]:
    data = []
    for i, v in enumerate(vectors):
        arr = np.asarray(v, dtype=np.float32)
        emb: Any = base64.b64encode(arr.astype("<f4").tobytes()).decode("ascii") \
            if encoding_format == "base64" else arr.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}}


def parse_embeddings_input(body: Mapping[str, Any], detokenize: Any) -> list[str]:
    """OpenAI's `input` (or llama.cpp's `content`): a string, strings, token ids, or lists of them."""
    if not isinstance(body, Mapping):
        raise _bad("the request must be a JSON object")
    inp = body.get("input", body.get("content"))
    if inp is None:
        raise _bad('"input" is required')
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise _bad('"encoding_format" must be "float" or "base64"')

    def is_ids(x: Any) -> bool:
        return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

    if isinstance(inp, str):
        items: list[Any] = [inp]
    elif is_ids(inp):
        items = [inp]
    elif isinstance(inp, list) and inp and all(isinstance(x, str) or is_ids(x) for x in inp):
        items = list(inp)
    else:
        raise _bad('"input" must be a string, an array of strings, or token ids')
    out = []
    for x in items:
        text = x if isinstance(x, str) else detokenize(x)
        if not text:
            raise _bad('"input" must not be empty')
        out.append(text)
    return out


# The library's front doors (Model.create_chat_completion / create_completion) ---------------------
def _run(model: Any, req: OpenAIRequest, shaper: ChatShaper) -> Any:
    if not req.stream:
        final = model.complete(req.prompt, **{**req.options, "stream": False})
        return shaper.response(final)

    def chunks() -> Iterator[dict[str, Any]]:
        first = shaper.start()
        if first is not None:
            yield first
        it = model.complete(req.prompt, **{**req.options, "stream": True})
        try:
            for c in it:
                if c.get("stop"):
                    yield from shaper.end(c)
                else:
                    x = shaper.chunk(c)
                    if x is not None:
                        yield x
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    return chunks()


def create_chat_completion(model: Any, messages: Any, **options: Any) -> Any:
    """OpenAI's chat completion in-process: the response object, or its chunks with stream=True."""
    req = parse_chat({**options, "messages": messages}, model)
    return _run(model, req, ChatShaper(req, model_name(model)))


def create_completion(model: Any, prompt: Any, **options: Any) -> Any:
    """OpenAI's text completion in-process: the response object, or its chunks with stream=True."""
    req = parse_completion({**options, "prompt": prompt})
    return _run(model, req, CompletionShaper(req, model_name(model)))
