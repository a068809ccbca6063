"""Argument checks shared by the library, the CLI and the request parsers: integers in a range,
finite numbers, text that can be encoded as UTF-8, and the `rllama.Model` constructor's
arguments. Each failure is an ``InvalidRequestError`` whose message names the argument and the
range it must be in, never a bare OverflowError or UnicodeEncodeError from a conversion."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rllama.errors import InvalidRequestError

INT32_MAX = 2**31 - 1
# The largest finite float32: options are float32 in the core, and a larger value would turn
# into infinity there (then NaN next to an infinite logit).
FLOAT32_MAX = 3.4028234663852886e38

# n_probs: how many top tokens a response reports per generated token. Each entry costs memory
# per generated token (and per streamed chunk), so it is capped; above the cap it is clamped,
# like llama.cpp clamps it to the vocabulary. The server's --n-probs-max and
# `params.parse(n_probs_max=...)` change the cap.
N_PROBS_MAX = 100

# Upper bounds of the Model constructor's sizes: far above any real use, low enough that the
# core's arithmetic on them cannot overflow.
N_CTX_MAX = 2**24
N_THREADS_MAX = 1024


def _describe(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"between {lo} and {hi}"
    if lo is not None:
        return f">= {lo}"
    return f"<= {hi}"


def integer(value: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """`value` as an int in [lo, hi] (a float with an integral value is accepted, bool is not)."""
    if isinstance(value, bool):
        raise InvalidRequestError(f'"{name}" must be an integer, got bool')
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidRequestError(f'"{name}" must be an integer, got {value}')
        value = int(value)
    if not isinstance(value, int):
        raise InvalidRequestError(f'"{name}" must be an integer, got {type(value).__name__}')
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        shown = value if abs(value) < 10**30 else f"an integer of {len(str(abs(value)))} digits"
        raise InvalidRequestError(f'"{name}" must be {_describe(lo, hi)}, got {shown}')
    return value


def number(value: Any, name: str, lo: float = -FLOAT32_MAX, hi: float = FLOAT32_MAX) -> float:
    """`value` as a finite float in [lo, hi] (ints of any size are accepted and range-checked)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequestError(f'"{name}" must be a number, got {type(value).__name__}')
    try:
        v = float(value)
    except OverflowError:
        v = math.inf if value > 0 else -math.inf
    if math.isnan(v):
        raise InvalidRequestError(f'"{name}" must be a number, got NaN')
    if not lo <= v <= hi:
        raise InvalidRequestError(f'"{name}" must be a finite number between {lo:g} and {hi:g}, got {v:g}')
    return v


def text(value: str, name: str) -> str:
    """`value` if it encodes as UTF-8 (a lone surrogate such as '\\ud800' does not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidRequestError(
            f'"{name}" is not valid Unicode: lone surrogate {value[e.start]!r} at position {e.start}'
        ) from None
    return value


def texts(value: Any, name: str) -> Any:
    """Check every string inside `value` (nested lists, tuples and dict keys and values)."""
    if isinstance(value, str):
        text(value, name)
    elif isinstance(value, (list, tuple)):
        for v in value:
            texts(v, name)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            texts(k, name)
            texts(v, name)
    return value


# The Model constructor: argument -> (lo, hi) for integers (None: no bound). `None` values are
# the defaults and are not checked. n_ctx 0 means the model's training context.
_MODEL_INTS: dict[str, tuple[int | None, int | None]] = {
    "n_ctx": (0, N_CTX_MAX),
    "n_threads": (1, N_THREADS_MAX),
    "n_threads_batch": (1, N_THREADS_MAX),
    "n_batch": (1, N_CTX_MAX),
    "n_ubatch": (1, N_CTX_MAX),
    "n_parallel": (1, 4096),
    "yarn_orig_ctx": (0, N_CTX_MAX),
    "n_probs_max": (0, INT32_MAX),
}
_MODEL_POSITIVE = ("rope_freq_base", "rope_freq_scale", "yarn_attn_factor")
_MODEL_NUMBERS = ("yarn_ext_factor", "yarn_beta_fast", "yarn_beta_slow")
_MODEL_TEXTS = ("chat_template", "alias", "cache_type_k", "cache_type_v", "rope_scaling", "flash_attn")


def model_args(**kwargs: Any) -> None:
    """Check the `rllama.Model(...)` keyword arguments that are present (by name; unknown names
    are left to the constructor). Raises InvalidRequestError naming the argument and its range."""
    for name, v in kwargs.items():
        if v is None:
            continue
        if name in _MODEL_INTS:
            lo, hi = _MODEL_INTS[name]
            integer(v, name, lo, hi)
        elif name in _MODEL_POSITIVE:
            if number(v, name) <= 0:
                raise InvalidRequestError(f'"{name}" must be a finite number > 0, got {v}')
        elif name in _MODEL_NUMBERS:
            number(v, name)
        elif name in _MODEL_TEXTS:
            if not isinstance(v, str):
                raise InvalidRequestError(f'"{name}" must be a string, got {type(v).__name__}')
            text(v, name)


def perplexity_args(n_ctx: Any, n_chunks: Any = -1) -> None:
    """`Model.perplexity`: a chunk scores its second half, so it needs at least 2 tokens per half."""
    integer(n_ctx, "n_ctx", 4, N_CTX_MAX)
    integer(n_chunks, "n_chunks", -1, None)
