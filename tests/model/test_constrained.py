"""Grammar- and schema-constrained generation with the real model: whatever the seed, the output
is in the grammar / validates against the schema."""

from __future__ import annotations

import json

import jsonschema
import pytest
from rllama import GrammarError, InvalidRequestError
from rllama.sampling import Grammar

GBNF = r'''
root ::= "The answer is " answer "."
answer ::= ("yes" | "no" | "maybe") (", " [a-z]{1,8})?
'''

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("seed", range(8))
def test_gbnf_output_is_in_grammar(smollm2, seed):
    out = smollm2.complete("Question: is the sky green?\n", grammar=GBNF, n_predict=40, temperature=1.0,
                           seed=seed, cache_prompt=False)
    assert Grammar(GBNF).matches(out["content"]), out["content"]
    assert out["stopped_eos"] or out["stopped_limit"]


@pytest.mark.parametrize("seed", range(6))
def test_json_schema_output_validates(smollm2, seed):
    out = smollm2.complete("A person as JSON: ", json_schema=SCHEMA, n_predict=80, temperature=0.8, seed=seed,
                           cache_prompt=False)
    if out["stopped_limit"]:
        pytest.skip("ran out of tokens before the object closed")  # prefix-valid by construction
    jsonschema.validate(json.loads(out["content"]), SCHEMA)


def test_response_format_json_object(smollm2):
    """The grammar ends the object and the generation (greedy SmolLM2 closes it in ~20 tokens)."""
    out = smollm2.complete('Return a JSON object with the key "name" set to "Bob":\n',
                           response_format={"type": "json_object"}, n_predict=120, temperature=0,
                           cache_prompt=False)
    assert out["stopped_eos"], out
    assert json.loads(out["content"]) == {"name": "Bob"}


def test_bad_grammar_and_options(smollm2):
    with pytest.raises(GrammarError, match="parse"):
        smollm2.complete("x", grammar="root ::= (", n_predict=2)
    with pytest.raises(InvalidRequestError):
        smollm2.complete("x", samplers=["top_k", "nope"], n_predict=2)
    with pytest.raises(InvalidRequestError):
        smollm2.complete("x", json_schema={"type": "string", "not": {}}, n_predict=2)
