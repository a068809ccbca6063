"""Greedy generation against llama.cpp's (golden generate_*.json), under the golden README's rule:
ids identical up to the first step where the reference's top-2 probabilities are within 0.02
(a near-tie, after which divergence is tolerated); probabilities within 0.02."""

from __future__ import annotations

import math

import pytest

TIE = 0.02  # the golden README's near-tie threshold on the reference's top-2 probabilities
PROB_TOL = 0.02  # the golden README's probability tolerance


def compare(model, ref, prob_tol):
    """Per item: (diverged_without_near_tie, max probability difference before divergence)."""
    results = []
    for item in ref["items"]:
        out = model.complete(item["prompt_ids"], n_predict=32, temperature=0, top_k=1, n_probs=10,
                             cache_prompt=False, seed=1, return_tokens=True)
        ids, probs = out["tokens"], out["completion_probabilities"]
        assert len(probs) == len(ids)
        bad_divergence, max_diff = False, 0.0
        for k, step in enumerate(item["steps"][:len(ids)]):
            ours = {p["tok_str"]: p["prob"] for p in probs[k]["probs"]}
            for t in step["top"]:
                if t["token"] in ours:
                    max_diff = max(max_diff, abs(ours[t["token"]] - math.exp(t["logprob"])))
            if ids[k] != step["id"]:
                p1, p2 = (math.exp(t["logprob"]) for t in step["top"][:2])
                bad_divergence = p1 - p2 >= TIE
                break
        else:
            assert ids == item["ids"][:len(ids)]
            assert out["content"] == item["content"] or len(ids) < len(item["ids"])
            assert out["stopped_limit"] if item["stop_type"] == "limit" else out["stopped_eos"]
        results.append((bad_divergence, max_diff))
    return results


@pytest.fixture(scope="module")
def results(request, golden):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = compare(request.getfixturevalue(name), golden(f"generate_{name}.json"), PROB_TOL)
        return cache[name]

    return get


@pytest.mark.parametrize("name, at_least", [("smollm2", 11), ("gemma3", 11)])
def test_tokens_match_reference(results, name, at_least):
    """Items that follow llama.cpp token for token up to a near-tie (the README's rule): all 11."""
    r = results(name)
    assert sum(not bad for bad, _ in r) >= at_least, r


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_probabilities_close_to_reference(results, name):
    """Probabilities within the README's 0.02 of llama.cpp's over up to 32 steps. Measured max:
    smollm2 0.0002, gemma3 0.0014."""
    assert max(d for _, d in results(name)) <= PROB_TOL


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
def test_strict_golden_rule(results, name):
    """The golden README's rule as written. Both models follow llama.cpp bit for bit: measured max
    probability difference smollm2 0.0002, gemma3 0.0014 (llama.cpp itself, run here, is 0.0014 from
    the golden file: its server sums the softmax its own way)."""
    r = results(name)
    assert not any(bad for bad, _ in r) and max(d for _, d in r) <= PROB_TOL


@pytest.mark.parametrize("name", ["smollm2", "gemma3"])
@pytest.mark.parametrize("item", range(8))
def test_long_prompts_strict_golden_rule(request, golden, name, item):
    """generate_long_*.json, one case per prompt (37-652 tokens), under the README's rule: prompt
    batches of 64 tokens and more take llama.cpp's tiled flash attention, tokens over 512 cache
    cells its split-KV path, and the 652-token prompts cross a 512-token ubatch. Measured max
    probability difference: smollm2 0.0002, gemma3 0.0013."""
    ref = golden(f"generate_long_{name}.json")
    assert len(ref["items"]) == 8
    it = ref["items"][item]
    [(bad, diff)] = compare(request.getfixturevalue(name), {"items": [it]}, PROB_TOL)
    assert not bad and diff <= PROB_TOL, (it["n_prompt_tokens"], bad, diff)


def test_completion_response_shape(smollm2):
    out = smollm2.complete("The capital of France is", n_predict=8, temperature=0, n_probs=3)
    for key in ("content", "stop", "generation_settings", "model", "prompt", "stopped_eos", "stopped_limit",
                "stopped_word", "stopping_word", "timings", "tokens_cached", "tokens_evaluated",
                "tokens_predicted", "truncated", "completion_probabilities"):
        assert key in out, key
    assert out["stop"] is True and out["tokens_predicted"] == 8 and out["stopped_limit"]
    assert out["tokens_evaluated"] == 5 and out["prompt"] == "The capital of France is"
    t = out["timings"]
    assert t["predicted_n"] == 8 and t["predicted_ms"] > 0 and t["prompt_per_second"] > 0
    assert len(out["completion_probabilities"]) == 8
    assert all(len(p["probs"]) == 3 for p in out["completion_probabilities"])
    assert out["generation_settings"]["n_ctx"] == 2048 and out["generation_settings"]["temperature"] == 0


def test_stop_strings_and_stream(smollm2):
    full = smollm2.complete("The capital of France is", n_predict=16, temperature=0)["content"]
    assert full.startswith(" Paris")
    out = smollm2.complete("The capital of France is", n_predict=16, temperature=0, stop=["."])
    assert out["stopped_word"] and out["stopping_word"] == "." and out["content"] == full[:full.index(".")]
    chunks = list(smollm2.complete("The capital of France is", n_predict=16, temperature=0, stream=True))
    assert chunks[-1]["stop"] is True and all(c["stop"] is False for c in chunks[:-1])
    assert "".join(c["content"] for c in chunks[:-1]) == full


def test_prompt_cache_reuse_gives_same_result(smollm2):
    a = smollm2.complete("Once upon a time", n_predict=8, temperature=0, cache_prompt=True)
    b = smollm2.complete("Once upon a time", n_predict=8, temperature=0, cache_prompt=True)
    assert a["content"] == b["content"]
    assert b["timings"]["prompt_n"] == 1  # only the last prompt token re-evaluated


def test_seeded_sampling_is_reproducible(smollm2):
    kw = {"n_predict": 12, "temperature": 0.9, "top_k": 40, "seed": 1234, "cache_prompt": False}
    a = smollm2.complete("Tell me a story", **kw)
    b = smollm2.complete("Tell me a story", **kw)
    assert a["content"] == b["content"] and a["generation_settings"]["seed"] == 1234


def test_bad_requests(smollm2):
    from rllama import InvalidRequestError

    with pytest.raises(InvalidRequestError):
        smollm2.complete([999_999], n_predict=1)
    with pytest.raises(InvalidRequestError):
        smollm2.complete("x", n_predict="many")
    with pytest.raises(InvalidRequestError):
        smollm2.complete("x", stop=[1, 2])
    with pytest.raises(InvalidRequestError):
        smollm2.complete([], n_predict=1)
