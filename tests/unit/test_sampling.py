"""The sampler chain on fixed logit vectors against numpy references: whole distributions
(chi-square over many draws), not just the argmax; seeds; request parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rllama
from rllama.sampling import DEFAULTS, Sampler, SamplerVocab, SamplingParams, from_request, top_logprobs
from test_sampling_vocab import chi2_pvalue, softmax

N_VOCAB = 16
VOCAB = SamplerVocab([f"t{i}".encode() for i in range(N_VOCAB - 1)] + [b"\n"], [0])
NO_TRUNC = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "tfs_z": 1.0, "typical_p": 1.0, "temperature": 1.0}


def logits_for(seed: int, n: int = N_VOCAB, scale: float = 2.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=n) * scale).astype(np.float32)


def draws(params: dict, logits: np.ndarray, n: int = 20000, seed: int = 1234) -> np.ndarray:
    s = Sampler(SamplingParams(seed=seed, **params), VOCAB)
    out = s.sample_n(logits.astype(np.float32).tobytes(), n)
    return np.bincount(np.array(out), minlength=len(logits))


def assert_matches(counts: np.ndarray, p: np.ndarray):
    support = p > 0
    assert counts[~support].sum() == 0, f"drawn outside the support: {np.nonzero(counts * ~support)}"
    pv = chi2_pvalue(counts[support], p[support] / p[support].sum())
    assert pv > 1e-4, f"chi-square p={pv}\nobserved={counts / counts.sum()}\nexpected={p}"


# -- numpy references (llama.cpp semantics) --------------------------------------------------------


def ref_top_k(l, k):
    if k <= 0 or k >= len(l):
        return l
    out = np.full_like(l, -np.inf)
    idx = np.argsort(-l, kind="stable")[:k]
    out[idx] = l[idx]
    return out


def ref_top_p(l, p, min_keep=0):
    if p >= 1:
        return l
    probs = softmax(l)
    order = np.argsort(-l, kind="stable")
    cum = np.cumsum(probs[order])
    last = len(l)
    for i, c in enumerate(cum):
        if c >= p and i + 1 >= min_keep:
            last = i + 1
            break
    out = np.full_like(l, -np.inf)
    out[order[:last]] = l[order[:last]]
    return out


def ref_min_p(l, p, min_keep=0):
    probs = softmax(l)
    keep = probs >= p * probs.max()
    order = np.argsort(-l, kind="stable")
    for i in order[:min_keep]:
        keep[i] = True
    return np.where(keep, l, -np.inf)


def ref_typical(l, p, min_keep=0):
    if p >= 1:
        return l
    fin = np.isfinite(l)
    probs = softmax(l)
    ent = -(probs[fin] * np.log(probs[fin])).sum()
    shifted = np.abs(-np.log(np.where(fin, probs, 1)) - ent)
    shifted[~fin] = np.inf
    order = np.argsort(shifted, kind="stable")
    cum = 0.0
    last = fin.sum()
    for i, j in enumerate(order[: fin.sum()]):
        cum += probs[j]
        if cum > p and (min_keep == 0 or i + 1 >= min_keep):
            last = i + 1
            break
    out = np.full_like(l, -np.inf)
    out[order[:last]] = l[order[:last]]
    return out


def ref_tfs(l, z, min_keep=0):
    if z >= 1:
        return l
    order = np.argsort(-l, kind="stable")
    probs = softmax(l)[order]
    d2 = np.abs(np.diff(np.diff(probs)))
    d2 = d2 / d2.sum() if d2.sum() > 1e-6 else np.full_like(d2, 1 / len(d2))
    cum = 0.0
    last = len(l)
    for i, v in enumerate(d2):
        cum += v
        if cum > z and i >= min_keep:
            last = max(i, 1)  # at least one token stays
            break
    out = np.full_like(l, -np.inf)
    out[order[:last]] = l[order[:last]]
    return out


def ref_dynatemp(l, t, rng, exp):
    fin = np.isfinite(l)
    probs = softmax(l)
    ent = -(probs[fin] * np.log(probs[fin])).sum()
    norm = ent / math.log(fin.sum())
    dt = max(0.0, t - rng) + (2 * rng if t - rng >= 0 else t + rng) * norm**exp
    return l / dt


# -- each sampler ----------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 7])
def test_top_k(k):
    l = logits_for(k)
    assert_matches(draws({**NO_TRUNC, "top_k": k, "samplers": ["top_k"]}, l), softmax(ref_top_k(l, k)))


@pytest.mark.parametrize("p", [0.3, 0.7, 0.9])
def test_top_p(p):
    l = logits_for(10 + int(p * 10))
    assert_matches(draws({**NO_TRUNC, "top_p": p, "samplers": ["top_p"]}, l), softmax(ref_top_p(l, p)))


def test_top_p_min_keep():
    l = logits_for(5, scale=5.0)
    c = draws({**NO_TRUNC, "top_p": 0.01, "min_keep": 4, "samplers": ["top_p"]}, l)
    assert_matches(c, softmax(ref_top_p(l, 0.01, 4)))
    assert (c > 0).sum() == 4


@pytest.mark.parametrize("p", [0.05, 0.2, 0.5])
def test_min_p(p):
    l = logits_for(20 + int(p * 100))
    assert_matches(draws({**NO_TRUNC, "min_p": p, "samplers": ["min_p"]}, l), softmax(ref_min_p(l, p)))


@pytest.mark.parametrize("p", [0.3, 0.6, 0.9])
def test_typical_p(p):
    l = logits_for(30 + int(p * 10))
    assert_matches(draws({**NO_TRUNC, "typical_p": p, "samplers": ["typical_p"]}, l), softmax(ref_typical(l, p)))


@pytest.mark.parametrize("z", [0.5, 0.9, 0.99])
def test_tfs_z(z):
    l = logits_for(40 + int(z * 10), scale=3.0)
    assert_matches(draws({**NO_TRUNC, "tfs_z": z, "samplers": ["tfs_z"]}, l), softmax(ref_tfs(l, z)))


@pytest.mark.parametrize("t", [0.3, 1.0, 2.5])
def test_temperature(t):
    l = logits_for(50)
    assert_matches(draws({**NO_TRUNC, "temperature": t, "samplers": ["temperature"]}, l), softmax(l / t))


@pytest.mark.parametrize("rng,exp", [(0.5, 1.0), (0.7, 2.0)])
def test_dynatemp(rng, exp):
    l = logits_for(60)
    params = {**NO_TRUNC, "temperature": 1.0, "dynatemp_range": rng, "dynatemp_exponent": exp, "samplers": ["temperature"]}
    assert_matches(draws(params, l), softmax(ref_dynatemp(l, 1.0, rng, exp)))


def test_default_chain_order():
    l = logits_for(70, scale=1.5)
    ref = l
    ref = ref_top_k(ref, 40)
    ref = ref_top_p(ref, 0.95)
    ref = ref_min_p(ref, 0.05)
    ref = ref / 0.8
    assert_matches(draws({}, l), softmax(ref))


def test_custom_order_and_repeats():
    l = logits_for(71, scale=1.5)
    ref = ref_min_p(ref_top_k(ref_top_k(l / 0.5, 5), 3), 0.1)
    params = {**NO_TRUNC, "temperature": 0.5, "top_k": 5, "min_p": 0.1}
    # temperature first changes what min_p sees; top_k twice is allowed
    c = draws({**params, "top_k": 5, "samplers": ["temperature", "top_k", "top_k", "min_p"]}, l)
    ref5 = ref_min_p(ref_top_k(l / 0.5, 5), 0.1)
    assert_matches(c, softmax(ref5))
    assert ref is not None


def test_greedy_ignores_chain_and_reports_p1():
    l = logits_for(80)
    for t in (0.0, -1.0):
        s = Sampler(SamplingParams(temperature=t, seed=1), VOCAB)
        assert s.sample_n(l.tobytes(), 20) == [int(np.argmax(l))] * 20
        assert s.post_sampling_probs(5) == [(int(np.argmax(l)), 1.0)]


def test_post_sampling_probs_are_the_chain_candidates():
    l = logits_for(81)
    s = Sampler(SamplingParams(seed=1, **{**NO_TRUNC, "top_k": 3, "samplers": ["top_k"]}), VOCAB)
    s.sample(l.tobytes())
    got = s.post_sampling_probs(10)
    ref = softmax(ref_top_k(l, 3))
    assert [t for t, _ in got] == list(np.argsort(-ref)[:3])
    assert np.allclose([p for _, p in got], np.sort(ref)[::-1][:3], atol=1e-5)


def test_top_logprobs_is_raw_log_softmax():
    l = logits_for(82)
    got = top_logprobs(l.tobytes(), 5)
    ref = np.log(softmax(l.astype(np.float64)))
    order = np.argsort(-ref)[:5]
    assert [t for t, _ in got] == list(order)
    assert np.allclose([v for _, v in got], ref[order], atol=1e-5)


# -- penalties, bias ---------------------------------------------------------------------------------


def test_penalties_distribution():
    l = logits_for(90)
    hist = [3, 3, 5, 7, 7, 7, 15]
    s = Sampler(
        SamplingParams(seed=5, repeat_penalty=1.3, frequency_penalty=0.2, presence_penalty=0.4, repeat_last_n=6,
                       penalize_nl=False, **{**NO_TRUNC, "samplers": ["temperature"]}),
        VOCAB,
    )
    s.set_history(hist)
    c = np.bincount(s.sample_n(l.tobytes(), 20000), minlength=N_VOCAB)
    ref = l.astype(np.float64).copy()
    window = hist[-6:]
    for tok in set(window):
        if tok == 15:  # the newline token: penalize_nl false
            continue
        cnt = window.count(tok)
        ref[tok] = ref[tok] * 1.3 if ref[tok] <= 0 else ref[tok] / 1.3
        ref[tok] -= cnt * 0.2 + 0.4
    assert_matches(c, softmax(ref))


def test_penalty_prompt_replaces_history():
    l = np.ones(N_VOCAB, dtype=np.float32)
    l[4] = 5.0
    p = SamplingParams(temperature=0, repeat_penalty=100.0, penalty_prompt=[4], seed=1)
    s = Sampler(p, VOCAB)
    s.set_history([1, 2])  # ignored: penalty_prompt replaces the prompt
    assert s.sample(l.tobytes()) != 4


def test_logit_bias_and_ban():
    l = logits_for(91)
    bias = [(int(np.argmax(l)), None), (3, 2.0)]
    c = draws({**NO_TRUNC, "samplers": ["temperature"], "logit_bias": bias}, l)
    ref = l.astype(np.float64).copy()
    ref[int(np.argmax(l))] = -np.inf
    ref[3] += 2.0
    assert_matches(c, softmax(ref))


def test_ignore_eos_bans_eog():
    l = np.zeros(N_VOCAB, dtype=np.float32)
    l[0] = 50.0
    s = Sampler(SamplingParams(temperature=0, ignore_eos=True, seed=1), VOCAB)
    assert s.sample(l.tobytes()) != 0


def test_mirostat_first_draw_distribution_over_seeds():
    l = logits_for(92, scale=3.0)
    counts = np.zeros(N_VOCAB)
    for seed in range(4000):
        s = Sampler(SamplingParams(seed=seed, mirostat=2, mirostat_tau=2.0, temperature=1.0), VOCAB)
        counts[s.sample(l.tobytes())] += 1
    p = softmax(l.astype(np.float64))
    keep = -np.log2(p) <= 2 * 2.0  # mu starts at 2 * tau
    if not keep.any():
        keep[np.argmax(p)] = True
    assert_matches(counts, np.where(keep, p, 0))


def test_mirostat_1_runs_and_adapts():
    l = logits_for(93, scale=3.0)
    s = Sampler(SamplingParams(seed=3, mirostat=1, mirostat_tau=3.0, mirostat_eta=0.1), VOCAB)
    out = s.sample_n(l.tobytes(), 500)
    assert len(set(out)) > 1


# -- seeds ---------------------------------------------------------------------------------------------


def test_fixed_seed_reproducible_and_seeds_differ():
    l = logits_for(100)
    a = Sampler(SamplingParams(seed=42, **NO_TRUNC), VOCAB).sample_n(l.tobytes(), 200)
    b = Sampler(SamplingParams(seed=42, **NO_TRUNC), VOCAB).sample_n(l.tobytes(), 200)
    c = Sampler(SamplingParams(seed=43, **NO_TRUNC), VOCAB).sample_n(l.tobytes(), 200)
    assert a == b
    assert a != c


def test_random_seed_is_drawn_and_reported():
    s1 = Sampler(SamplingParams(seed=-1), VOCAB)
    s2 = Sampler(SamplingParams(seed=-1), VOCAB)
    assert s1.seed != s2.seed
    assert Sampler(SamplingParams(seed=7), VOCAB).seed == 7


def test_draws_over_many_seeds_follow_distribution():
    l = logits_for(101)
    counts = np.zeros(N_VOCAB)
    for seed in range(5000):
        counts[Sampler(SamplingParams(seed=seed, **NO_TRUNC), VOCAB).sample(l.tobytes())] += 1
    assert_matches(counts, softmax(l.astype(np.float64)))


# -- request parsing -----------------------------------------------------------------------------------


def test_defaults_match_reference():
    d = from_request({}).to_dict()
    for k, v in DEFAULTS.items():
        if isinstance(v, float):
            assert d[k] == pytest.approx(v, rel=1e-6), k
        else:
            assert d[k] == v, k


def test_options_parsed_and_clamped():
    p = from_request(
        {"temperature": -1, "top_k": -5, "top_p": 2, "min_p": -1, "mirostat": 7, "seed": 12,
         "samplers": ["Top-K", "nucleus", "temp", "typ_p"], "repeat_last_n": -1, "n_probs": 3},
        n_ctx=512,
    ).to_dict()
    assert p["temperature"] == 0 and p["top_k"] == 0 and p["top_p"] == 1 and p["min_p"] == 0
    assert p["mirostat"] == 2 and p["seed"] == 12 and p["n_probs"] == 3
    assert p["samplers"] == ["top_k", "top_p", "temperature", "typical_p"]
    assert p["repeat_last_n"] == 512
    assert from_request({"samplers": "kfypmt"}).to_dict()["samplers"] == DEFAULTS["samplers"]


@pytest.mark.parametrize(
    "opts",
    [
        {"samplers": ["top_k", "bogus"]},
        {"samplers": ["xtc"]},
        {"samplers": "kz"},
        {"samplers": 3},
        {"temperature": "hot"},
        {"top_k": 1.5},
        {"top_k": True},
        {"repeat_last_n": -2},
        {"min_keep": -1},
        {"penalize_nl": 1},
        {"penalty_prompt": {"a": 1}},
        {"logit_bias": 5},
        {"grammar": 5},
        {"grammar": 'root ::= "a"', "json_schema": {}},
        {"response_format": {"type": "yaml"}},
    ],
)
def test_invalid_options(opts):
    with pytest.raises(rllama.InvalidRequestError):
        from_request(opts)


def test_unknown_sampler_message_names_it():
    with pytest.raises(rllama.InvalidRequestError, match="bogus"):
        from_request({"samplers": ["bogus"]})


def test_logit_bias_forms():
    vocab = {"Hello": [10, 11], "x": [12]}

    def tok(s):
        return vocab[s]

    lb = from_request(
        {"logit_bias": [[1, 2.5], [2, False], ["Hello", -1], [99999, 1], ["bad"], [3, "x"]]}, tokenize=tok, n_vocab=100
    ).to_dict()["logit_bias"]
    assert lb == [(1, 2.5), (2, None), (10, -1.0), (11, -1.0)]
    lb = from_request({"logit_bias": {"5": 1.0, "x": False, "6": True}}, tokenize=tok, n_vocab=100).to_dict()["logit_bias"]
    assert lb == [(5, 1.0), (12, None)]


def test_penalty_prompt_text_and_tokens():
    assert from_request({"penalty_prompt": "ab"}, tokenize=lambda s: [7, 8]).to_dict()["penalty_prompt"] == [7, 8]
    assert from_request({"penalty_prompt": [1, 2]}).to_dict()["penalty_prompt"] == [1, 2]


def test_grammar_errors_are_grammar_errors_with_position():
    with pytest.raises(rllama.GrammarError, match=r"Failed to parse grammar.*line 2, column"):
        from_request({"grammar": 'root ::= "a"\nx ::= "b" ]\n'})
    assert issubclass(rllama.GrammarError, rllama.InvalidRequestError)


def test_response_format_forms():
    g1 = from_request({"response_format": {"type": "json_object"}}).to_dict()["grammar"]
    assert "root" in g1
    g2 = from_request({"response_format": {"type": "json_object", "schema": {"type": "string"}}}).to_dict()["grammar"]
    g3 = from_request(
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string"}}}}
    ).to_dict()["grammar"]
    assert g2 == g3
    assert from_request({"response_format": {"type": "text"}}).to_dict()["grammar"] == ""
