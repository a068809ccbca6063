"""The /completion options: one definition shared by `Model.complete` and the HTTP server.

Sampling options are parsed by `rllama.sampling.from_request`; this module adds the rest
(prompt, n_predict, stop, stream, cache_prompt, n_keep, return_tokens, post_sampling_probs, ...)
and builds the `generation_settings` object of the response.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rllama import sampling
from rllama.errors import InvalidRequestError

# Options we accept that only the server uses (or that have no effect in-process).
_SERVER_ONLY = {"id_slot", "image_data", "slot_id", "system_prompt", "t_max_predict_ms", "t_max_prompt_ms",
                "timings_per_token", "response_fields", "lora", "model", "n_cmpl", "n_indent", "dry_multiplier",
                "dry_base", "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers", "xtc_probability",
                "xtc_threshold", "top_n_sigma", "min_tokens", "adaptive_target", "adaptive_decay",
                "backend_sampling", "chat_format", "reasoning_format", "thinking_forced_open", "grammar_lazy",
                "grammar_triggers", "preserved_tokens", "parse_tool_calls"}


@dataclass
class CompletionRequest:
    prompt: str | list[int]
    n_predict: int = -1
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    cache_prompt: bool = True
    n_keep: int = 0
    return_tokens: bool = False
    post_sampling_probs: bool = False
    add_special: bool = True
    sampling: Any = None  # rllama._core.SamplingParams
    n_probs: int = 0


def _int(o: Mapping[str, Any], k: str, default: int) -> int:
    v = o.get(k, default)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise InvalidRequestError(f'"{k}" must be an integer')
    return int(v)


def _bool(o: Mapping[str, Any], k: str, default: bool) -> bool:
    v = o.get(k, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise InvalidRequestError(f'"{k}" must be a boolean')
    return v


def parse_prompt(prompt: Any) -> str | list[int]:
    """A prompt is a string or a list of token ids (a one-element list of either is unwrapped)."""
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        if not prompt:
            raise InvalidRequestError('"prompt" is empty')
        return list(prompt)
    raise InvalidRequestError('"prompt" must be a string or an array of token ids')


def parse(options: Mapping[str, Any], *, tokenize: Callable[[str], Sequence[int]] | None, n_vocab: int,
          n_ctx: int, default_n_predict: int = -1) -> CompletionRequest:
    if not isinstance(options, Mapping):
        raise InvalidRequestError("request options must be a JSON object")
    if "prompt" not in options:
        raise InvalidRequestError('"prompt" is required')
    stop = options.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequestError('"stop" must be a string or an array of strings')
    n_predict = _int(options, "n_predict", default_n_predict)
    if "max_tokens" in options and "n_predict" not in options:
        n_predict = _int(options, "max_tokens", default_n_predict)
    sp = sampling.from_request(options, tokenize=tokenize, n_vocab=n_vocab, n_ctx=n_ctx)
    return CompletionRequest(
        prompt=parse_prompt(options["prompt"]),
        n_predict=n_predict,
        stop=stop,
        stream=_bool(options, "stream", False),
        cache_prompt=_bool(options, "cache_prompt", True),
        n_keep=_int(options, "n_keep", 0),
        return_tokens=_bool(options, "return_tokens", False),
        post_sampling_probs=_bool(options, "post_sampling_probs", False),
        add_special=_bool(options, "add_special", True),
        sampling=sp,
        n_probs=sp.to_dict()["n_probs"],
    )


def generation_settings(req: CompletionRequest, *, n_ctx: int, model: str, seed: int) -> dict[str, Any]:
    s = dict(req.sampling.to_dict())
    s.pop("penalty_prompt", None)
    s["seed"] = seed
    s.update(
        n_ctx=n_ctx,
        model=model,
        n_predict=req.n_predict,
        n_keep=req.n_keep,
        stop=list(req.stop),
        stream=req.stream,
        cache_prompt=req.cache_prompt,
        post_sampling_probs=req.post_sampling_probs,
    )
    return s
