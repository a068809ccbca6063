"""-ctk/-ctv: every KV cache type llama.cpp offers generates sensibly; the accurate ones (f32,
q8_0) keep f16's greedy tokens for a while; bad names are clean errors."""

from __future__ import annotations

import pytest
import rllama
from rllama.model import Model

PROMPT = "The capital of France is Paris. The capital of Germany is"


@pytest.fixture(scope="module")
def f16_tokens(smollm2):
    return smollm2.complete(PROMPT, n_predict=12, temperature=0, return_tokens=True)["tokens"]


@pytest.mark.parametrize("k,v,same", [("f32", "f32", 12), ("q8_0", "q8_0", 6), ("q8_0", "f16", 6),
                                      ("q4_0", "q4_1", 1), ("q5_0", "q5_1", 1), ("iq4_nl", "q8_0", 1)])
def test_cache_types_generate(smollm2_path, f16_tokens, k, v, same):
    m = Model(smollm2_path, n_ctx=256, n_threads=2, cache_type_k=k, cache_type_v=v)
    out = m.complete(PROMPT, n_predict=12, temperature=0, return_tokens=True)
    assert len(out["tokens"]) == 12
    assert out["tokens"][:same] == f16_tokens[:same], (k, v, m.detokenize(out["tokens"]))


def test_bad_cache_type_is_an_error(smollm2_path):
    with pytest.raises(rllama.RllamaError, match="cache type"):
        Model(smollm2_path, n_ctx=256, cache_type_k="q4_k")
