"""Request bodies: strict JSON parsing and a type/range table for the /completion options.

The library (`rllama.params`, `rllama.sampling`) owns the meaning of every option; this module
only rejects, before any work is done, what no option can mean: a body that is not a JSON
object, a field of the wrong JSON type, a number that does not fit the engine's integer or
float types. Every rejection is a 400 that names the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from rllama.openai import COMPLETION_OPTIONS
from rllama.server.errors import invalid, not_supported

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38
MAX_DEPTH = 64


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _depth(v: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value, stopping once past `limit` (iterative)."""
    stack = [(v, 1)]
    deepest = 0
    while stack:
        x, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(x, dict):
            stack.extend((y, d + 1) for y in x.values())
        elif isinstance(x, list):
            stack.extend((y, d + 1) for y in x)
    return deepest


def _has_lone_surrogate(v: Any) -> bool:
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            try:
                x.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return False


def parse_json(data: bytes, *, allow_empty: bool = False) -> dict[str, Any]:
    """A request body as a JSON object, or a 400 saying why not."""
    if not data.strip():
        if allow_empty:
            return {}
        raise invalid("the request body is empty: a JSON object is required")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(f"the request body is not valid UTF-8 (byte {e.start})") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise invalid("the request JSON is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, integers with too many digits
        raise invalid(f"invalid JSON in the request body: {e}") from None
    if not isinstance(body, dict):
        raise invalid(f"the request body must be a JSON object, got {type(body).__name__}")
    if "\\u" in text and _has_lone_surrogate(body):
        raise invalid("invalid JSON in the request body: a \\u escape is an unpaired UTF-16 surrogate")
    if _depth(body, MAX_DEPTH) > MAX_DEPTH:
        raise invalid(f"the request JSON is nested deeper than {MAX_DEPTH} levels")
    return body


# Kinds: "int", "num", "bool", "str", "obj"; tuples allow several; ranges for ints.
def _is_int(v: Any) -> bool:
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _type_name(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(v), "number")


def check_int(body: Mapping[str, Any], name: str, lo: int = -INT32_MAX - 1, hi: int = INT32_MAX) -> None:
    v = body.get(name)
    if v is None:
        return
    if not _is_int(v):
        raise invalid(f'"{name}" must be an integer, got {_type_name(v)}')
    if not lo <= v <= hi:
        raise invalid(f'"{name}" must be between {lo} and {hi}, got {v}')


def check_num(body: Mapping[str, Any], name: str) -> None:
    v = body.get(name)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise invalid(f'"{name}" must be a number, got {_type_name(v)}')
    if not math.isfinite(float(v)) or abs(float(v)) > FLOAT32_MAX:
        raise invalid(f'"{name}" must be a finite number within float range, got {v}')


def check_bool(body: Mapping[str, Any], name: str) -> None:
    v = body.get(name)
    if v is not None and not isinstance(v, bool):
        raise invalid(f'"{name}" must be a boolean, got {_type_name(v)}')


def check_str(body: Mapping[str, Any], name: str) -> None:
    v = body.get(name)
    if v is not None and not isinstance(v, str):
        raise invalid(f'"{name}" must be a string, got {_type_name(v)}')


def check_one_of(body: Mapping[str, Any], name: str, kinds: tuple[type, ...], what: str) -> None:
    v = body.get(name)
    if v is not None and (isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds)):
        raise invalid(f'"{name}" must be {what}, got {_type_name(v)}')


_NUMBERS = ["temperature", "dynatemp_range", "dynatemp_exponent", "top_p", "min_p", "tfs_z", "typical_p",
            "repeat_penalty", "presence_penalty", "frequency_penalty", "mirostat_tau", "mirostat_eta"]
_INTS = {"top_k": (-INT32_MAX - 1, INT32_MAX), "min_keep": (0, INT32_MAX), "n_predict": (-1, INT32_MAX),
         "max_tokens": (-1, INT32_MAX), "n_keep": (-1, INT32_MAX), "repeat_last_n": (-1, INT32_MAX),
         "mirostat": (0, 2), "seed": (-(2**63), 2**64 - 1), "n_probs": (0, INT32_MAX), "id_slot": (-1, INT32_MAX)}
_BOOLS = ["stream", "penalize_nl", "ignore_eos", "cache_prompt", "return_tokens", "post_sampling_probs",
          "add_special", "timings_per_token"]

# The server forwards only the /completion options the library understands (llama.cpp ignores
# unknown fields, and so do we).


def check_completion_options(body: Mapping[str, Any]) -> None:
    """Types and ranges of the /completion options (semantic checks stay in the library)."""
    for name in _NUMBERS:
        check_num(body, name)
    for name, (lo, hi) in _INTS.items():
        check_int(body, name, lo, hi)
    for name in _BOOLS:
        check_bool(body, name)
    check_str(body, "grammar")
    check_one_of(body, "stop", (str, list), "a string or an array of strings")
    if isinstance(body.get("stop"), list) and not all(isinstance(s, str) for s in body["stop"]):
        raise invalid('"stop" must be a string or an array of strings')
    check_one_of(body, "samplers", (str, list), "an array of sampler names or a string of letters")
    check_one_of(body, "logit_bias", (list, dict), "an array of [token, bias] pairs or an object")
    check_one_of(body, "json_schema", (dict, bool), "an object")
    check_one_of(body, "response_format", (dict,), "an object")
    check_one_of(body, "penalty_prompt", (str, list), "a string or an array of token ids")
    image_data = body.get("image_data")
    if image_data:
        raise not_supported('"image_data" is not supported: this server has no multimodal projector (--mmproj)')


def completion_options(body: Mapping[str, Any], n_vocab: int) -> dict[str, Any]:
    """The options to forward to `Model.complete`: known fields only, n_probs capped at the vocab."""
    opts = {k: v for k, v in body.items() if k in COMPLETION_OPTIONS}
    if isinstance(opts.get("n_probs"), (int, float)) and not isinstance(opts["n_probs"], bool):
        opts["n_probs"] = min(int(opts["n_probs"]), n_vocab)
    return opts


def token_list(v: Any, name: str, n_vocab: int) -> list[int]:
    if not isinstance(v, list):
        raise invalid(f'"{name}" must be an array of token ids, got {_type_name(v)}')
    out = []
    for t in v:
        if not _is_int(t):
            raise invalid(f'"{name}" must be an array of token ids (integers), got {_type_name(t)}')
        if not 0 <= t < n_vocab:
            raise invalid(f'"{name}": token id {t} out of range (vocabulary size {n_vocab})')
        out.append(int(t))
    return out
