"""The /completion options: one definition shared by `Model.complete` and the HTTP server.

Sampling options are parsed by `rllama.sampling.from_request`; this module adds the rest
(prompt, n_predict, stop, stream, cache_prompt, n_keep, return_tokens, post_sampling_probs, ...)
and builds the `generation_settings` object of the response.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rllama import sampling, validate
from rllama.errors import InvalidRequestError
from rllama.validate import INT32_MAX, N_PROBS_MAX

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


def _int(o: Mapping[str, Any], k: str, default: int, lo: int | None = None, hi: int | None = None) -> int:
    v = o.get(k, default)
    if v is None:
        return default
    return validate.integer(v, k, lo, hi)


def _bool(o: Mapping[str, Any], k: str, default: bool) -> bool:
    v = o.get(k, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise InvalidRequestError(f'"{k}" must be a boolean')
    return v


def _is_token(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _token_ids(ids: list[Any]) -> list[int]:
    for t in ids:
        if not 0 <= t <= INT32_MAX:
            shown = t if abs(t) < 10**30 else f"an integer of {len(str(abs(t)))} digits"
            raise InvalidRequestError(f'"prompt": token id {shown} is out of range (0 to {INT32_MAX})')
    return list(ids)


def parse_prompt(prompt: Any, tokenize: Callable[[str, bool], Sequence[int]] | None = None) -> str | list[int]:
    """One prompt in any form llama.cpp's /completion takes for a single completion:

    - a string;
    - an array of token ids;
    - an array mixing strings and token ids: the pieces are concatenated (each string tokenized,
      special tokens parsed; only a string in the first place gets the model's BOS);
    - a one-element array holding one of these, or {"prompt_string": <one of these>}.

    An array of several strings or arrays is several prompts (several completions in
    llama.cpp): refused here, since one call returns one completion. Everything is checked
    before any generation starts. `tokenize(text, add_special) -> ids` turns mixed prompts into
    ids; without it a mixed prompt is an error.
    """
    if isinstance(prompt, Mapping):
        if "multimodal_data" in prompt:
            raise InvalidRequestError('"prompt": multimodal data is not supported')
        if "prompt_string" not in prompt:
            raise InvalidRequestError('"prompt" as an object must have a "prompt_string"')
        prompt = prompt["prompt_string"]
        if isinstance(prompt, Mapping):
            raise InvalidRequestError('"prompt_string" must be a string or an array of token ids and strings')
    if isinstance(prompt, str):
        return validate.text(prompt, "prompt")
    if not isinstance(prompt, (list, tuple)):
        raise InvalidRequestError(f'"prompt" must be a string or an array of token ids, got {type(prompt).__name__}')
    if not prompt:
        raise InvalidRequestError('"prompt" is empty')
    if not any(_is_token(x) for x in prompt):
        # llama.cpp: an array without token ids is an array of prompts.
        if len(prompt) > 1:
            raise InvalidRequestError(
                f'"prompt" holds {len(prompt)} prompts; one call completes one prompt (send one request per '
                "prompt, or a single prompt: a string, an array of token ids, or an array mixing both)")
        inner = prompt[0]
        if isinstance(inner, (list, tuple)) and any(isinstance(x, (list, tuple, Mapping)) for x in inner):
            raise InvalidRequestError('"prompt": a prompt inside an array must be a string, token ids, or both')
        return parse_prompt(inner, tokenize)
    if all(_is_token(x) for x in prompt):
        return _token_ids(list(prompt))
    bad = [x for x in prompt if not (_is_token(x) or isinstance(x, str))]
    if bad:
        raise InvalidRequestError(
            f'"prompt": an array of token ids may mix in strings, but not {type(bad[0]).__name__} values')
    if tokenize is None:
        raise InvalidRequestError('"prompt" mixing strings and token ids needs a tokenizer')
    ids: list[int] = []
    for i, piece in enumerate(prompt):
        if isinstance(piece, str):
            ids += [int(t) for t in tokenize(validate.text(piece, "prompt"), i == 0)]
        else:
            ids += _token_ids([piece])
    if not ids:
        raise InvalidRequestError('"prompt" is empty')
    return ids


def parse(options: Mapping[str, Any], *, tokenize: Callable[[str], Sequence[int]] | None, n_vocab: int,
          n_ctx: int, default_n_predict: int = -1, n_probs_max: int = N_PROBS_MAX,
          tokenize_prompt: Callable[[str, bool], Sequence[int]] | None = None) -> CompletionRequest:
    """The request options, all checked before anything runs.

    `tokenize(text)` (no special tokens added) resolves text in sampling options;
    `tokenize_prompt(text, add_special)` the strings of a mixed prompt (default: `tokenize`, so no
    BOS is added); `n_probs_max` caps n_probs (clamped)."""
    if not isinstance(options, Mapping):
        raise InvalidRequestError("request options must be a JSON object")
    if "prompt" not in options:
        raise InvalidRequestError('"prompt" is required')
    stop = options.get("stop") or []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequestError('"stop" must be a string or an array of strings')
    validate.texts(stop, "stop")
    n_predict = _int(options, "n_predict", default_n_predict, -1, INT32_MAX)
    if "max_tokens" in options and "n_predict" not in options:
        n_predict = _int(options, "max_tokens", default_n_predict, -1, INT32_MAX)
    if tokenize_prompt is None and tokenize is not None:
        def tokenize_prompt(text: str, add_special: bool) -> Sequence[int]:
            return tokenize(text)
    prompt = parse_prompt(options["prompt"], tokenize_prompt)
    sp = sampling.from_request(options, tokenize=tokenize, n_vocab=n_vocab, n_ctx=n_ctx, n_probs_max=n_probs_max)
    return CompletionRequest(
        prompt=prompt,
        n_predict=n_predict,
        stop=stop,
        stream=_bool(options, "stream", False),
        cache_prompt=_bool(options, "cache_prompt", True),
        n_keep=_int(options, "n_keep", 0, -1, INT32_MAX),
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
