"""JSON Schema -> GBNF: constrained sampling with the real smollm2 vocabulary and random logits
always yields JSON that validates against the schema (checked with `jsonschema`); valid instances
are accepted by the grammar; unsupported keywords are invalid requests that name them."""

from __future__ import annotations

import json
import re

import jsonschema
import numpy as np
import pytest
import rllama
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rllama.json_schema import int_range, schema_to_grammar
from rllama.sampling import Grammar, Sampler, SamplingParams, from_request
from test_sampling_vocab import smollm2_pieces, smollm2_vocab

SCHEMAS = {
    "any": {},
    "object": {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 0, "maximum": 130},
                       "ok": {"type": "boolean"}},
        "required": ["name", "age"],
    },
    "optional-only": {"type": "object", "properties": {"a": {"type": "null"}, "b": {"enum": ["x", 1, None]}}},
    "additional": {"type": "object", "properties": {"k": {"const": "v"}}, "required": ["k"],
                   "additionalProperties": {"type": "integer"}},
    "array": {"type": "array", "items": {"type": "integer", "exclusiveMinimum": -3, "exclusiveMaximum": 12},
              "minItems": 1, "maxItems": 4},
    "tuple": {"type": "array", "prefixItems": [{"type": "string", "format": "date"}, {"type": "number", "minimum": 0}]},
    "strings": {"type": "object", "properties": {
        "id": {"type": "string", "format": "uuid"},
        "t": {"type": "string", "format": "time"},
        "dt": {"type": "string", "format": "date-time"},
        "code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{3}(x|yz)?$"},
        "short": {"type": "string", "minLength": 2, "maxLength": 3},
    }, "required": ["id", "t", "dt", "code", "short"]},
    "anyof-ref": {
        "$defs": {"leaf": {"type": "integer", "minimum": 10, "maximum": 99},
                  "node": {"type": "object", "properties": {"v": {"$ref": "#/$defs/leaf"},
                                                            "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}},
                           "required": ["v", "next"]}},
        "$ref": "#/$defs/node",
    },
    "allof-oneof": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                              {"properties": {"b": {"oneOf": [{"type": "string", "maxLength": 2}, {"type": "number"}]}},
                               "required": ["b"]}]},
    "types-list": {"type": ["string", "null", "integer"], "maxLength": 4, "maximum": 5},
    "positive-number": {"type": "number", "exclusiveMinimum": 0},
}

FORMAT_CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER


def _structural_bias(pieces: list[bytes]) -> np.ndarray:
    b = np.zeros(len(pieces), dtype=np.float32)
    for i, p in enumerate(pieces):
        if any(c in p for c in b'"}],') and len(p) <= 3:
            b[i] = 3.0
    return b


def generate(schema, seed: int, n_tokens: int = 80, **params):
    pieces, eog = smollm2_pieces()
    g = schema_to_grammar(schema)
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n_tokens, len(pieces))).astype(np.float32) * 2.0
    logits += _structural_bias(pieces)
    logits[:, eog] += 6.0
    s = Sampler(SamplingParams(grammar=g, seed=seed, **params), smollm2_vocab())
    ids, _ = s.generate(logits.tobytes(), len(pieces))
    finished = bool(ids) and ids[-1] in eog
    text = b"".join(pieces[t] for t in ids if t not in eog)
    return finished, text, g


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_random_generation_validates(name):
    schema = SCHEMAS[name]
    finished = 0
    for seed in range(20):
        params = {} if seed % 2 else {"temperature": 1.2, "top_k": 0, "top_p": 1.0, "min_p": 0.0}
        done, text, g = generate(schema, seed, n_tokens=200 if name == "strings" else 80, **params)
        if not done:
            assert Grammar(g).allows_prefix(text)
            continue
        finished += 1
        value = json.loads(text.decode("utf-8"))
        jsonschema.validate(value, schema, format_checker=FORMAT_CHECKER)
    assert finished >= 3, f"only {finished} finished generations"


VALID = {
    "object": [{"name": "Al", "age": 30}, {"name": "", "age": 0, "ok": False}],
    "optional-only": [{}, {"a": None}, {"b": 1}, {"a": None, "b": "x"}],
    "additional": [{"k": "v"}, {"k": "v", "kk": 3, "x": -1}],
    "array": [[-2], [11, 0, 5, 3]],
    "tuple": [["2024-12-31", 0.5]],
    "anyof-ref": [{"v": 10, "next": {"v": 99, "next": None}}],
    "types-list": ["abcd", None, -100, 5],
    "positive-number": [0.001, 3, 1.5],
}
INVALID = {
    "object": [{"name": "Al"}, {"name": "Al", "age": 131}, {"name": "toolongname", "age": 1}],
    "additional": [{"k": "w"}, {"k": "v", "x": "s"}, '{"k": "v", "k": 1}'],
    "array": [[], [12], [-3], [1, 2, 3, 4, 5]],
    "tuple": [["2024-02-30", 1]],
    "types-list": ["abcde", 6, True],
    "positive-number": [0, -1],
}


@pytest.mark.parametrize("name", list(VALID))
def test_grammar_accepts_valid_instances(name):
    g = Grammar(schema_to_grammar(SCHEMAS[name]))
    for v in VALID[name]:
        jsonschema.validate(v, SCHEMAS[name])
        assert g.matches(json.dumps(v)), v
        assert g.matches(json.dumps(v, separators=(",", ":"))), v


@pytest.mark.parametrize("name", list(INVALID))
def test_grammar_rejects_invalid_instances(name):
    g = Grammar(schema_to_grammar(SCHEMAS[name]))
    for v in INVALID[name]:
        assert not g.matches(v if isinstance(v, str) else json.dumps(v)), v


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lo=st.one_of(st.none(), st.integers(-10**6, 10**6)), hi=st.one_of(st.none(), st.integers(-10**6, 10**6)),
       x=st.integers(-10**7, 10**7))
def test_integer_ranges_exact(lo, hi, x):
    if lo is not None and hi is not None and lo > hi:
        lo, hi = hi, lo
    g = Grammar(f"root ::= {int_range(lo, hi)}\n")
    inside = (lo is None or x >= lo) and (hi is None or x <= hi)
    assert g.matches(str(x)) == inside
    if lo is not None:
        assert g.matches(str(lo))
    if hi is not None:
        assert g.matches(str(hi))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lo=st.one_of(st.none(), st.integers(-50, 50)),
    hi=st.one_of(st.none(), st.integers(-50, 50)),
    lo_x=st.booleans(),
    hi_x=st.booleans(),
    x=st.one_of(st.integers(-100, 100), st.decimals(-100, 100, places=3).map(lambda d: float(d))),
)
def test_number_ranges_exact(lo, hi, lo_x, hi_x, x):
    schema = {"type": "number"}
    if lo is not None:
        schema["exclusiveMinimum" if lo_x else "minimum"] = lo
    if hi is not None:
        schema["exclusiveMaximum" if hi_x else "maximum"] = hi
    try:
        g = Grammar(schema_to_grammar(schema))
    except rllama.InvalidRequestError:
        assert lo is not None and hi is not None and (lo > hi or (lo == hi and (lo_x or hi_x)))
        return
    text = json.dumps(x)
    if "e" in text:
        return
    valid = True
    try:
        jsonschema.validate(x, schema)
    except jsonschema.ValidationError:
        valid = False
    assert g.matches(text) == valid, (schema, text)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**9, 10**9) | st.floats(allow_nan=False, allow_infinity=False, width=32)
    | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(JSON_VALUES)
def test_any_value_schema_accepts_any_json(v):
    g = Grammar(schema_to_grammar({}))
    text = json.dumps(v)
    if "e+" in text or "e-" in text or any(len(d) > 16 for d in re.findall(r"\.(\d+)", text)):
        return  # exponent / precision forms outside the number rule's bounded digits (any number)
    assert g.matches(text), text


@pytest.mark.parametrize(
    "schema,keyword",
    [
        ({"type": "string", "not": {"const": "a"}}, "not"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "patternProperties": {"a": {}}}, "patternProperties"),
        ({"if": {}, "then": {}}, "if"),
        ({"type": "number", "multipleOf": 2}, "multipleOf"),
        ({"type": "number", "minimum": 3.5}, "minimum"),
        ({"type": "number", "exclusiveMaximum": 0.25}, "exclusiveMaximum"),
        ({"type": "string", "minimum": 3}, "minimum"),
        ({"type": "string", "maxLength": 5000}, "maxLength"),
        ({"$ref": "http://example.com/s.json"}, "$ref"),
        ({"type": "string", "pattern": "(a)\\1"}, "pattern"),
        ({"type": "string", "pattern": "(?=a)"}, "pattern"),
    ],
)
def test_unsupported_keywords_are_named(schema, keyword):
    with pytest.raises(rllama.InvalidRequestError, match=keyword.replace("$", "\\$")):
        from_request({"json_schema": schema})


def test_bad_schemas_are_invalid_requests():
    for schema in [{"type": "strin"}, {"type": "object", "required": ["x"], "properties": {}}, {"$ref": "#/$defs/missing"},
                   {"enum": []}, {"anyOf": []}]:
        with pytest.raises(rllama.InvalidRequestError):
            from_request({"json_schema": schema})


def test_left_recursive_schema_is_a_grammar_error():
    schema = {"$defs": {"a": {"anyOf": [{"$ref": "#/$defs/a"}, {"type": "null"}]}}, "$ref": "#/$defs/a"}
    with pytest.raises(rllama.InvalidRequestError):
        from_request({"json_schema": schema})


def test_json_object_response_format_is_an_object():
    g = Grammar(from_request({"response_format": {"type": "json_object"}}).to_dict()["grammar"])
    assert g.matches('{"a": [1, 2, {"b": null}]}')
    assert not g.matches("[1]")
    g = Grammar(from_request({"json_schema": {}}).to_dict()["grammar"])
    assert g.matches("[1]") and g.matches('"x"') and g.matches("null")


SCHEMA_LEAVES = st.sampled_from([
    {}, {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}, {"type": "null"},
    {"type": "string", "maxLength": 3}, {"type": "integer", "minimum": -2, "maximum": 40}, {"enum": ["a", 1, None]},
    {"const": {"k": [1]}}, {"type": "string", "format": "date"}, {"type": "string", "pattern": "^[ab]+c?$"},
    {"type": "number", "exclusiveMinimum": 0}, {"type": "string", "minLength": 1},
    {"type": "number", "minimum": -5, "exclusiveMaximum": 3},
])
SCHEMAS_ST = st.recursive(
    SCHEMA_LEAVES,
    lambda kids: st.one_of(
        st.builds(lambda items, lo: {"type": "array", "items": items, "minItems": lo, "maxItems": lo + 2}, kids,
                  st.integers(0, 2)),
        st.builds(lambda props, req: {"type": "object", "properties": props,
                                      "required": [k for k in props if k in req]},
                  st.dictionaries(st.sampled_from(["a", "b", "ab", "c d", "é"]), kids, max_size=3),
                  st.sets(st.sampled_from(["a", "b", "ab", "c d", "é"]))),
        st.builds(lambda xs: {"anyOf": xs}, st.lists(kids, min_size=1, max_size=3)),
    ),
    max_leaves=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SCHEMAS_ST, st.integers(0, 2**31))
def test_fuzzed_schemas_generate_valid_json(schema, seed):
    """Random schemas: the grammar parses, and a random-logit generation that finishes validates."""
    done, text, _ = generate(schema, seed % 1000, n_tokens=60)
    if done:
        jsonschema.validate(json.loads(text.decode("utf-8")), schema, format_checker=FORMAT_CHECKER)
