"""The sampling options of a /completion request: parse and validate a request dict into the
native :class:`rllama._core.SamplingParams`.

Defaults are those of the reference llama.cpp server (the version the golden data comes from);
in particular ``repeat_penalty`` defaults to 1.0 (off) and ``penalize_nl`` to false, where the
older server README says 1.1 and true. Numeric options the reference clamps (top_k, top_p,
min_p, temperature, mirostat, n_probs) are clamped; the others are validated and a bad value is an
``InvalidRequestError`` whose message the server sends as a 400. A grammar that does not parse
raises ``GrammarError`` ("Failed to parse grammar: ... at line L, column C").

n_probs: the probabilities reported per token are taken from the raw logits (log-softmax, before
any sampler), like the reference with ``post_sampling_probs: false``; with
``post_sampling_probs: true`` they are the sampler chain's final candidates
(``Sampler.post_sampling_probs``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rllama import validate
from rllama._core import Grammar, Sampler, SamplerVocab, SamplingParams, top_logprobs
from rllama.errors import InvalidRequestError
from rllama.json_schema import schema_to_grammar
from rllama.validate import INT32_MAX, N_PROBS_MAX

__all__ = [
    "DEFAULTS",
    "SAMPLER_NAMES",
    "Grammar",
    "Sampler",
    "SamplerVocab",
    "SamplingParams",
    "from_request",
    "resolve_grammar",
    "top_logprobs",
]

DEFAULTS: dict[str, Any] = {
    "temperature": 0.8,
    "dynatemp_range": 0.0,
    "dynatemp_exponent": 1.0,
    "top_k": 40,
    "top_p": 0.95,
    "min_p": 0.05,
    "tfs_z": 1.0,
    "typical_p": 1.0,
    "min_keep": 0,
    "samplers": ["top_k", "tfs_z", "typical_p", "top_p", "min_p", "temperature"],
    "repeat_penalty": 1.0,
    "repeat_last_n": 64,
    "penalize_nl": False,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "penalty_prompt": None,
    "mirostat": 0,
    "mirostat_tau": 5.0,
    "mirostat_eta": 0.1,
    "logit_bias": [],
    "ignore_eos": False,
    "seed": -1,
    "n_probs": 0,
    "grammar": "",
}

# Canonical names and the aliases llama.cpp accepts (case-insensitive).
SAMPLER_NAMES: dict[str, str] = {}
for _canon, _aliases in {
    "top_k": ["top-k", "topk"],
    "tfs_z": ["tfs-z", "tfsz", "tfs"],
    "typical_p": ["typical-p", "typicalp", "typ_p", "typ-p", "typp", "typ", "typical"],
    "top_p": ["top-p", "topp", "nucleus"],
    "min_p": ["min-p", "minp"],
    "temperature": ["temp"],
    "penalties": [],
}.items():
    SAMPLER_NAMES[_canon] = _canon
    for _a in _aliases:
        SAMPLER_NAMES[_a] = _canon

# llama.cpp's one-letter sampler codes ("samplers": "kfypmt").
SAMPLER_CHARS = {"k": "top_k", "f": "tfs_z", "y": "typical_p", "p": "top_p", "m": "min_p", "t": "temperature",
                 "e": "penalties"}
# Known to llama.cpp but not implemented here: named in the error.
UNSUPPORTED_SAMPLERS = {"dry", "xtc", "top_n_sigma", "top-n-sigma", "infill", "adaptive_p", "adaptive-p"}


def _invalid(msg: str) -> InvalidRequestError:
    return InvalidRequestError(msg)


def _number(opts: Mapping[str, Any], name: str, default: float) -> float:
    """A finite number within float32's range (the core's type for every sampling number)."""
    v = opts.get(name)
    if v is None:
        return default
    return validate.number(v, name)


def _integer(opts: Mapping[str, Any], name: str, default: int, lo: int | None = None,
             hi: int | None = None) -> int:
    v = opts.get(name)
    if v is None:
        return default
    return validate.integer(v, name, lo, hi)


def _boolean(opts: Mapping[str, Any], name: str, default: bool) -> bool:
    v = opts.get(name)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise _invalid(f'"{name}" must be a boolean, got {type(v).__name__}')
    return v


def _clamp(v: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, v))


def parse_samplers(value: Any) -> list[str]:
    """`samplers` as a list of names (aliases allowed, repeats allowed) or a string of letters."""
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch not in SAMPLER_CHARS:
                raise _invalid(f'Unknown sampler letter in "samplers": {ch!r}')
            out.append(SAMPLER_CHARS[ch])
        return out
    if not isinstance(value, (list, tuple)):
        raise _invalid('"samplers" must be an array of sampler names')
    out = []
    for name in value:
        if not isinstance(name, str):
            raise _invalid('"samplers" must be an array of sampler names')
        key = name.lower()
        if key in UNSUPPORTED_SAMPLERS:
            raise _invalid(f'Sampler {name!r} in "samplers" is not supported')
        if key not in SAMPLER_NAMES:
            raise _invalid(
                f'Unknown sampler name in "samplers": {name!r} (known: top_k, tfs_z, typical_p, top_p, '
                "min_p, temperature)"
            )
        out.append(SAMPLER_NAMES[key])
    return out


def _tokens(value: Any, name: str, tokenize: Callable[[str], Sequence[int]] | None) -> list[int]:
    if isinstance(value, str):
        if tokenize is None:
            raise _invalid(f'"{name}" as text needs a tokenizer')
        return [int(t) for t in tokenize(validate.text(value, name))]
    if isinstance(value, (list, tuple)) and all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        if any(not 0 <= t <= INT32_MAX for t in value):
            raise _invalid(f'"{name}" token ids must be between 0 and {INT32_MAX}')
        return list(value)
    raise _invalid(f'"{name}" must be a string or an array of token ids')


def parse_logit_bias(
    value: Any, tokenize: Callable[[str], Sequence[int]] | None, n_vocab: int | None
) -> list[tuple[int, float | None]]:
    """All of llama.cpp's forms: [[id, bias]], [[id, false]] (never), [["text", bias]] (every token
    of the text), and OpenAI's {"id": bias} (keys may also be text). A bias of None means -inf.
    Like the reference, malformed entries and out-of-range ids are skipped, not errors."""
    if value is None:
        return []
    out: list[tuple[int, float | None]] = []

    def bias_of(b: Any) -> tuple[bool, float | None]:
        if b is False:
            return True, None
        if isinstance(b, (int, float)) and not isinstance(b, bool):
            try:
                b = float(b)
            except OverflowError:  # an int beyond float: as large a bias as there is
                b = math.inf if b > 0 else -math.inf
            if math.isnan(b):
                return False, None
            if b == -math.inf:
                return True, None
            # +inf would make the logit infinite (NaN in the softmax): the largest float32
            # bias already makes the token certain.
            return True, min(b, validate.FLOAT32_MAX)
        return False, None

    def add_token(tok: int, bias: float | None) -> None:
        if 0 <= tok <= INT32_MAX and (n_vocab is None or tok < n_vocab):
            out.append((tok, bias))

    def add_text(text: str, bias: float | None) -> None:
        if tokenize is None:
            raise _invalid('"logit_bias" with text keys needs a tokenizer')
        for t in tokenize(validate.text(text, "logit_bias")):
            add_token(int(t), bias)

    if isinstance(value, (list, tuple)):
        for el in value:
            if not isinstance(el, (list, tuple)) or len(el) != 2:
                continue
            ok, bias = bias_of(el[1])
            if not ok:
                continue
            key = el[0]
            if isinstance(key, int) and not isinstance(key, bool):
                add_token(key, bias)
            elif isinstance(key, str):
                add_text(key, bias)
    elif isinstance(value, Mapping):
        for key, b in value.items():
            ok, bias = bias_of(b)
            if not ok:
                continue
            k = str(key)
            try:
                tok = int(k)
            except ValueError:
                add_text(k, bias)
            else:
                add_token(tok, bias)
    else:
        raise _invalid('"logit_bias" must be an array of [token, bias] pairs or an object')
    return out


def resolve_grammar(opts: Mapping[str, Any]) -> str:
    """The GBNF text for `grammar`, `json_schema` or `response_format` (validated: a grammar that
    does not parse raises GrammarError, an unsupported schema InvalidRequestError)."""
    grammar = opts.get("grammar")
    schema = opts.get("json_schema")
    rf = opts.get("response_format")
    if grammar is not None and not isinstance(grammar, str):
        raise _invalid('"grammar" must be a string')
    if grammar and schema is not None:
        raise _invalid('Either "json_schema" or "grammar" can be specified, but not both')
    if schema is None and not grammar and rf is not None:
        schema = _schema_from_response_format(rf)
    if schema is not None:
        if not isinstance(schema, (Mapping, bool)):
            raise _invalid('"json_schema" must be an object')
        text = schema_to_grammar(schema)
    else:
        text = grammar or ""
    if text:
        validate.text(text, "json_schema" if schema is not None else "grammar")
        Grammar(text)  # raises GrammarError with line and column
    return text


def _schema_from_response_format(rf: Any) -> Any:
    if not isinstance(rf, Mapping):
        raise _invalid('"response_format" must be an object')
    kind = rf.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        schema = rf.get("schema")
        # OpenAI's JSON mode: any JSON object unless a schema narrows it.
        return {"type": "object"} if schema is None else schema
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, Mapping):
            raise _invalid('"response_format.json_schema" must be an object')
        schema = js.get("schema", {})
        return schema
    raise _invalid(f'"response_format" type must be one of "text", "json_object" or "json_schema", but got: {kind}')


def from_request(
    options: Mapping[str, Any],
    tokenize: Callable[[str], Sequence[int]] | None = None,
    n_vocab: int | None = None,
    n_ctx: int | None = None,
    n_probs_max: int = N_PROBS_MAX,
) -> SamplingParams:
    """Parse the sampling options of a /completion request into native params.

    ``tokenize(text) -> token ids`` (no special tokens added) resolves text in `logit_bias` and
    `penalty_prompt`; ``n_vocab`` filters out-of-range ids in `logit_bias`; ``n_ctx`` resolves
    ``repeat_last_n: -1`` (without it -1 means the whole history, which the context bounds).
    ``n_probs`` is clamped to ``n_probs_max`` (default ``validate.N_PROBS_MAX``).
    Options that are not about sampling are ignored.
    """
    if not isinstance(options, Mapping):
        raise _invalid("request options must be a JSON object")
    o = options
    d = DEFAULTS
    kw: dict[str, Any] = {}
    kw["temperature"] = max(0.0, _number(o, "temperature", d["temperature"]))
    kw["dynatemp_range"] = _number(o, "dynatemp_range", d["dynatemp_range"])
    kw["dynatemp_exponent"] = _number(o, "dynatemp_exponent", d["dynatemp_exponent"])
    kw["top_k"] = int(_clamp(_integer(o, "top_k", d["top_k"]), 0, INT32_MAX))
    kw["top_p"] = _clamp(_number(o, "top_p", d["top_p"]), 0.0, 1.0)
    kw["min_p"] = _clamp(_number(o, "min_p", d["min_p"]), 0.0, 1.0)
    kw["tfs_z"] = _number(o, "tfs_z", d["tfs_z"])
    kw["typical_p"] = _number(o, "typical_p", d["typical_p"])
    kw["min_keep"] = _integer(o, "min_keep", d["min_keep"], 0, INT32_MAX)
    samplers = o.get("samplers")
    kw["samplers"] = parse_samplers(samplers) if samplers is not None else list(d["samplers"])
    kw["repeat_penalty"] = _number(o, "repeat_penalty", d["repeat_penalty"])
    last_n = _integer(o, "repeat_last_n", d["repeat_last_n"])
    if last_n < -1 or last_n > INT32_MAX:
        raise _invalid(f'"repeat_last_n" must be -1 (whole context), 0 (off) or a positive count up to {INT32_MAX}')
    if last_n == -1 and n_ctx:
        last_n = int(n_ctx)
    kw["repeat_last_n"] = last_n
    kw["penalize_nl"] = _boolean(o, "penalize_nl", d["penalize_nl"])
    kw["presence_penalty"] = _number(o, "presence_penalty", d["presence_penalty"])
    kw["frequency_penalty"] = _number(o, "frequency_penalty", d["frequency_penalty"])
    pp = o.get("penalty_prompt")
    if pp is not None:
        kw["penalty_prompt"] = _tokens(pp, "penalty_prompt", tokenize)
    kw["mirostat"] = int(_clamp(_integer(o, "mirostat", d["mirostat"]), 0, 2))
    kw["mirostat_tau"] = _number(o, "mirostat_tau", d["mirostat_tau"])
    kw["mirostat_eta"] = _number(o, "mirostat_eta", d["mirostat_eta"])
    kw["logit_bias"] = parse_logit_bias(o.get("logit_bias"), tokenize, n_vocab)
    kw["ignore_eos"] = _boolean(o, "ignore_eos", d["ignore_eos"])
    seed = _integer(o, "seed", d["seed"])
    kw["seed"] = -1 if seed < 0 else seed & 0xFFFFFFFF
    # Negative means none (as before); beyond int32 is an error, like the server's check; above
    # the cap it is clamped (each entry costs memory for every generated token).
    kw["n_probs"] = min(max(0, _integer(o, "n_probs", d["n_probs"], None, INT32_MAX)), n_probs_max)
    kw["grammar"] = resolve_grammar(o)
    return SamplingParams(**kw)
