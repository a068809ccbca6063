"""Shared helpers for the sampling/grammar tests: the real smollm2 vocabulary as token bytes
(GPT-2 byte-level strings from the GGUF mapped back to bytes), numpy references and a chi-square
test. Other test modules import from here."""

from __future__ import annotations

import functools
import math

import numpy as np
import rllama.gguf
import rllama.models
from rllama.sampling import SamplerVocab


def _byte_decoder() -> dict[str, int]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@functools.lru_cache(maxsize=1)
def smollm2_pieces() -> tuple[list[bytes], list[int]]:
    """(token bytes by id, end-of-generation ids) of the real smollm2 vocabulary."""
    r = rllama.gguf.GgufReader(rllama.models.resolve("smollm2"))
    md = r.metadata
    dec = _byte_decoder()
    pieces = []
    for tok, ty in zip(md["tokenizer.ggml.tokens"], md["tokenizer.ggml.token_type"]):
        if ty == 3:  # control tokens render as their text
            pieces.append(tok.encode())
        else:
            pieces.append(bytes(dec[c] for c in tok))
    eog = sorted({int(md["tokenizer.ggml.eos_token_id"]), pieces.index(b"<|endoftext|>"), pieces.index(b"<|im_end|>")})
    return pieces, eog


@functools.lru_cache(maxsize=1)
def smollm2_vocab() -> SamplerVocab:
    pieces, eog = smollm2_pieces()
    return SamplerVocab(pieces, eog)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def chi2_pvalue(observed: np.ndarray, expected_p: np.ndarray) -> float:
    """Pearson chi-square goodness of fit, p-value by the Wilson-Hilferty approximation.
    Cells with expected count < 5 are pooled."""
    n = observed.sum()
    exp = expected_p * n
    order = np.argsort(exp)
    obs_c, exp_c = [], []
    acc_o = acc_e = 0.0
    for i in order:
        acc_o += observed[i]
        acc_e += exp[i]
        if acc_e >= 5:
            obs_c.append(acc_o)
            exp_c.append(acc_e)
            acc_o = acc_e = 0.0
    if acc_e > 0 and exp_c:
        obs_c[-1] += acc_o
        exp_c[-1] += acc_e
    obs_a, exp_a = np.array(obs_c), np.array(exp_c)
    if (exp_a == 0).any() or len(exp_a) < 2:
        return 1.0 if np.allclose(obs_a, exp_a) else 0.0
    stat = float(((obs_a - exp_a) ** 2 / exp_a).sum())
    k = len(exp_a) - 1
    z = ((stat / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


def test_vocab_bytes_roundtrip():
    pieces, eog = smollm2_pieces()
    assert len(pieces) == 49152
    assert b" the" in pieces
    assert b"\n" in pieces
    assert 2 in eog
    v = smollm2_vocab()
    assert len(v) == 49152
    assert v.newline == pieces.index(b"\n")


def test_chi2_helper_sane():
    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.3, 0.2])
    obs = np.bincount(rng.choice(3, size=5000, p=p), minlength=3)
    assert chi2_pvalue(obs, p) > 0.001
    assert chi2_pvalue(obs, np.array([0.2, 0.3, 0.5])) < 1e-6
