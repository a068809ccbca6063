"""-ctk/-ctv: every KV cache type llama.cpp offers generates sensibly: the first tokens match the
f16 cache's and their probabilities stay close (closest for f32 and q8_0); bad names are clean
errors."""

from __future__ import annotations

import pytest
import rllama
from rllama.model import Model

PROMPT = "The capital of France is Paris. The capital of Germany is"


def top(out, i):
    return {p["tok_str"]: p["prob"] for p in out["completion_probabilities"][i]["probs"]}


@pytest.fixture(scope="module")
def f16_out(smollm2):
    return smollm2.complete(PROMPT, n_predict=2, temperature=0, n_probs=3, return_tokens=True)


# 4- and 5-bit keys move this small model's probabilities by up to about a third (how far depends
# on rounding anywhere upstream of the cache); 8-bit and wider caches stay within a few hundredths
# (llama.cpp's own q8_0/q8_0 cache moves the second token's "." by 0.035 from its f16 cache's).
@pytest.mark.parametrize("k,v,tol", [("f32", "f32", 0.03), ("q8_0", "q8_0", 0.05), ("q8_0", "f16", 0.03),
                                     ("q4_0", "q4_1", 0.35), ("q5_0", "q5_1", 0.35), ("iq4_nl", "q8_0", 0.35)])
def test_cache_types_generate(smollm2_path, f16_out, k, v, tol):
    m = Model(smollm2_path, n_ctx=256, n_threads=2, cache_type_k=k, cache_type_v=v)
    out = m.complete(PROMPT, n_predict=2, temperature=0, n_probs=3, return_tokens=True)
    assert out["tokens"] == f16_out["tokens"], (k, v, out["content"])
    for i in range(2):
        want, got = top(f16_out, i), top(out, i)
        best = max(want, key=want.get)
        assert abs(got[best] - want[best]) <= tol, (k, v, i, got, want)


def test_bad_cache_type_is_an_error(smollm2_path):
    with pytest.raises(rllama.RllamaError, match="cache type"):
        Model(smollm2_path, n_ctx=256, cache_type_k="q4_k")
