"""Forward passes of small synthetic models (random f32 weights written with the `gguf` package)
against a numpy reference forward pass written here from the architectures' definitions: llama
(adjacent-pair RoPE), qwen2 (Q/K/V biases, NeoX RoPE) and phi3 (fused Q/K/V and gate/up
matrices, NeoX RoPE, RoPE frequency factors), with grouped-query attention, in one batch and
token by token through the KV cache."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from rllama import _core


class CoreModel:
    """The native model with its engine started (a vocabulary of placeholder pieces: these
    files have no tokenizer), evaluating logits as an engine job."""

    def __init__(self, path: str, **kwargs):
        self.m = _core.Model(path, **kwargs)
        self.m.start_engine(_core.SamplerVocab([b"x"] * self.m.n_vocab, []), n_ctx=64)

    def eval(self, tokens, n_ctx, n_batch=512, all_logits=False):
        rid = self.m.submit_logits(tokens, n_ctx=n_ctx, n_batch=n_batch, all_logits=all_logits)
        while True:
            for i, kind, payload in self.m.wait_events(1000):
                assert i == rid
                if kind == "error":
                    raise payload
                return payload[0]

N_VOCAB, N_EMBD, N_FF, N_HEAD, N_KV, N_LAYER, EPS, BASE = 64, 64, 96, 4, 2, 2, 1e-5, 10000.0
HD = N_EMBD // N_HEAD


def make_weights(arch: str, rng) -> dict[str, np.ndarray]:
    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(np.float32)

    def vec(n, around=1.0):
        return (around + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"token_embd.weight": mat(N_VOCAB, N_EMBD), "output_norm.weight": vec(N_EMBD),
         "output.weight": mat(N_VOCAB, N_EMBD)}
    for i in range(N_LAYER):
        b = f"blk.{i}."
        w |= {b + "attn_norm.weight": vec(N_EMBD), b + "attn_q.weight": mat(N_HEAD * HD, N_EMBD),
              b + "attn_k.weight": mat(N_KV * HD, N_EMBD), b + "attn_v.weight": mat(N_KV * HD, N_EMBD),
              b + "attn_output.weight": mat(N_EMBD, N_HEAD * HD), b + "ffn_norm.weight": vec(N_EMBD),
              b + "ffn_gate.weight": mat(N_FF, N_EMBD), b + "ffn_up.weight": mat(N_FF, N_EMBD),
              b + "ffn_down.weight": mat(N_EMBD, N_FF)}
        if arch == "qwen2":
            w |= {b + "attn_q.bias": vec(N_HEAD * HD, 0.0), b + "attn_k.bias": vec(N_KV * HD, 0.0),
                  b + "attn_v.bias": vec(N_KV * HD, 0.0)}
    return w


def fuse_phi3(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The same model with phi3's fused matrices: attn_qkv = [Q; K; V], ffn_up = [gate; up]."""
    out = dict(w)
    for i in range(N_LAYER):
        b = f"blk.{i}."
        out[b + "attn_qkv.weight"] = np.concatenate([out.pop(b + f"attn_{p}.weight") for p in "qkv"])
        out[b + "ffn_up.weight"] = np.concatenate([out.pop(b + "ffn_gate.weight"), out.pop(b + "ffn_up.weight")])
    return out


def write_model(path, arch: str, weights: dict[str, np.ndarray], yarn: dict | None = None,
                attn_factor: float | None = None, orig_ctx: int | None = None) -> None:
    wr = gguf.GGUFWriter(str(path), arch)
    if attn_factor is not None:
        wr.add_rope_scaling_attn_factors(attn_factor)
    if orig_ctx is not None:
        wr.add_rope_scaling_orig_ctx_len(orig_ctx)
    if yarn:
        wr.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        wr.add_rope_scaling_factor(yarn["factor"])
        wr.add_rope_scaling_orig_ctx_len(yarn["orig_ctx"])
    wr.add_block_count(N_LAYER)
    wr.add_context_length(256)
    wr.add_embedding_length(N_EMBD)
    wr.add_feed_forward_length(N_FF)
    wr.add_head_count(N_HEAD)
    wr.add_head_count_kv(N_KV)
    wr.add_layer_norm_rms_eps(EPS)
    wr.add_rope_freq_base(BASE)
    wr.add_vocab_size(N_VOCAB)
    for name, t in weights.items():
        wr.add_tensor(name, t)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def rmsnorm(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * w


def rope(x, pos, neox: bool, base: float = BASE, yarn: dict | None = None, factors=None, attn_factor=1.0):
    """x: (n_tokens, n_heads, HD); rotate pairs by pos * base^(-2i/HD) / factors[i], sin and cos
    scaled by attn_factor. YaRN (from its paper, as ggml implements it): between the correction
    dimensions the angle mixes the interpolated (pos / factor) and the original one, and both sin
    and cos grow by 1 + 0.1 ln(factor)."""
    half = HD // 2
    i = np.arange(half)
    theta = pos[:, None] * base ** (-2.0 * i / HD)  # (n, half)
    if factors is not None:
        theta = theta / factors
    scale = attn_factor
    if yarn:
        interp = theta / yarn["factor"]

        def corr(beta):
            return HD * np.log(yarn["orig_ctx"] / (beta * 2 * np.pi)) / (2 * np.log(base))

        lo, hi = max(0.0, np.floor(corr(32.0))), min(HD - 1.0, np.ceil(corr(1.0)))
        mix = 1 - np.clip((i - lo) / max(0.001, hi - lo), 0, 1)
        theta = interp * (1 - mix) + theta * mix
        scale = 1 + 0.1 * np.log(yarn["factor"])
    c, s = scale * np.cos(theta)[:, None, :], scale * np.sin(theta)[:, None, :]
    if neox:
        a, b = x[..., :half], x[..., half:]
        return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
    return out


def reference_forward(arch: str, w: dict[str, np.ndarray], tokens: list[int], base: float = BASE,
                      yarn: dict | None = None, factors=None, attn_factor: float = 1.0) -> np.ndarray:
    """`w` with separate matrices (phi3 fuses them in the file only)."""
    neox = arch in ("qwen2", "phi3")
    r = {"base": base, "yarn": yarn, "factors": factors, "attn_factor": attn_factor}
    W = {k: v.astype(np.float64) for k, v in w.items()}
    n = len(tokens)
    pos = np.arange(n, dtype=np.float64)
    x = W["token_embd.weight"][tokens]
    for i in range(N_LAYER):
        b = f"blk.{i}."
        h = rmsnorm(x, W[b + "attn_norm.weight"])
        q, k, v = (h @ W[b + f"attn_{p}.weight"].T for p in "qkv")
        if arch == "qwen2":
            q, k, v = q + W[b + "attn_q.bias"], k + W[b + "attn_k.bias"], v + W[b + "attn_v.bias"]
        q = rope(q.reshape(n, N_HEAD, HD), pos, neox, **r)
        k = rope(k.reshape(n, N_KV, HD), pos, neox, **r)
        v = v.reshape(n, N_KV, HD)
        att = np.zeros((n, N_HEAD, HD))
        for hh in range(N_HEAD):
            kv = hh // (N_HEAD // N_KV)
            s = q[:, hh] @ k[:, kv].T / np.sqrt(HD)
            s[np.triu_indices(n, 1)] = -np.inf
            p = np.exp(s - s.max(-1, keepdims=True))
            att[:, hh] = (p / p.sum(-1, keepdims=True)) @ v[:, kv]
        x = x + att.reshape(n, -1) @ W[b + "attn_output.weight"].T
        h = rmsnorm(x, W[b + "ffn_norm.weight"])
        g, u = h @ W[b + "ffn_gate.weight"].T, h @ W[b + "ffn_up.weight"].T
        x = x + (g / (1 + np.exp(-g)) * u) @ W[b + "ffn_down.weight"].T
    return rmsnorm(x, W["output_norm.weight"]) @ W["output.weight"].T


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_synthetic_forward_matches_numpy(tmp_path, arch):
    rng = np.random.default_rng(3)
    w = make_weights(arch, rng)
    path = tmp_path / f"{arch}.gguf"
    write_model(path, arch, w)
    tokens = rng.integers(0, N_VOCAB, 12).tolist()
    want = reference_forward(arch, w, tokens)
    m = CoreModel(str(path), n_threads=2, cache_type_k="f32", cache_type_v="f32")
    for n_batch in (len(tokens), 1, 5):  # one batch; token by token; batches through the cache
        got = np.frombuffer(m.eval(tokens, 32, n_batch=n_batch, all_logits=True), dtype=np.float32)
        np.testing.assert_allclose(got.reshape(len(tokens), N_VOCAB), want, rtol=1e-3, atol=1e-3,
                                   err_msg=f"{arch} n_batch={n_batch}")


def test_phi3_fused_matrices_and_rope_factors(tmp_path):
    """phi3: one Q/K/V matrix and one [gate; up] matrix; with rope_factors_short/long the angles are
    divided by the short factors up to the original context and by the long ones beyond it, and
    rope.scaling.attn_factor scales sin and cos."""
    rng = np.random.default_rng(11)
    w = make_weights("llama", rng)
    tokens = rng.integers(0, N_VOCAB, 12).tolist()
    path = tmp_path / "phi3.gguf"
    write_model(path, "phi3", fuse_phi3(w))
    m = CoreModel(str(path), n_threads=2, cache_type_k="f32", cache_type_v="f32")
    want = reference_forward("phi3", w, tokens)
    for n_batch in (len(tokens), 1, 5):
        got = np.frombuffer(m.eval(tokens, 32, n_batch=n_batch, all_logits=True), dtype=np.float32)
        np.testing.assert_allclose(got.reshape(len(tokens), N_VOCAB), want, rtol=1e-3, atol=1e-3)

    short = (1 + rng.random(HD // 2)).astype(np.float32)
    long = (1 + 8 * rng.random(HD // 2)).astype(np.float32)
    path = tmp_path / "phi3-long.gguf"
    write_model(path, "phi3", fuse_phi3(w) | {"rope_factors_short.weight": short, "rope_factors_long.weight": long},
                attn_factor=1.2, orig_ctx=64)
    m = CoreModel(str(path), n_threads=2, cache_type_k="f32", cache_type_v="f32")
    for n_ctx, factors in ((64, short), (128, long)):
        want = reference_forward("phi3", w, tokens, factors=factors, attn_factor=1.2)
        got = np.frombuffer(m.eval(tokens, n_ctx, n_batch=5, all_logits=True), dtype=np.float32)
        np.testing.assert_allclose(got.reshape(len(tokens), N_VOCAB), want, rtol=1e-3, atol=1e-3, err_msg=str(n_ctx))
    assert np.abs(reference_forward("phi3", w, tokens, factors=long) - reference_forward("phi3", w, tokens)).max() > 0.05


def test_flash_attention_paths(tmp_path):
    """--flash-attn on and auto (llama.cpp's CPU flash attention: one pass with an online softmax,
    f16 query and accumulator over the f16 cache, for batches under 64 tokens; f32 tiles from 64)
    and off (the f32 tiles for every batch) all agree with the reference; auto is on, and for big
    batches off, bit for bit."""
    rng = np.random.default_rng(12)
    w = make_weights("llama", rng)
    path = tmp_path / "m.gguf"
    write_model(path, "llama", w)
    tokens = rng.integers(0, N_VOCAB, 80).tolist()
    want = reference_forward("llama", w, tokens)
    got = {}
    for fa in ("on", "off", "auto"):
        m = CoreModel(str(path), n_threads=2, flash_attn=fa)
        for n_batch in (80, 1):
            out = m.eval(tokens, 128, n_batch=n_batch, all_logits=True)
            got[fa, n_batch] = out
            y = np.frombuffer(out, dtype=np.float32).reshape(len(tokens), N_VOCAB)
            np.testing.assert_allclose(y, want, rtol=2e-2, atol=2e-2, err_msg=f"{fa} {n_batch}")
    assert got["auto", 1] == got["on", 1] and got["auto", 80] == got["off", 80] == got["on", 80]
    assert got["on", 1] != got["off", 1]
    with pytest.raises(Exception, match="flash attention"):
        _core.Model(str(path), flash_attn="sometimes")


def test_yarn_from_metadata_and_rope_overrides(tmp_path):
    """YaRN read from the file's rope.scaling.* keys; --rope-freq-base and --rope-scaling given to
    the model override the file."""
    rng = np.random.default_rng(6)
    w = make_weights("llama", rng)
    yarn = {"factor": 4.0, "orig_ctx": 64}
    path = tmp_path / "yarn.gguf"
    write_model(path, "llama", w, yarn=yarn)
    tokens = rng.integers(0, N_VOCAB, 40).tolist()
    cases = [({}, {"yarn": yarn}), ({"rope_freq_base": 500.0}, {"base": 500.0, "yarn": yarn}),
             ({"rope_scaling": "none"}, {})]
    for kwargs, ref in cases:
        want = reference_forward("llama", w, tokens, **ref)
        m = CoreModel(str(path), n_threads=2, cache_type_k="f32", cache_type_v="f32", **kwargs)
        got = np.frombuffer(m.eval(tokens, 64, n_batch=16, all_logits=True), dtype=np.float32)
        np.testing.assert_allclose(got.reshape(len(tokens), N_VOCAB), want, rtol=1e-3, atol=1e-3, err_msg=str(kwargs))
    assert np.abs(reference_forward("llama", w, tokens, yarn=yarn) - reference_forward("llama", w, tokens)).max() > 0.05
    with pytest.raises(Exception, match="rope scaling"):
        _core.Model(str(path), rope_scaling="ntk")


def test_thread_counts_do_not_change_results(tmp_path):
    """--threads for single tokens and --threads-batch for batches share one pool; every split of
    the work gives the same bits."""
    rng = np.random.default_rng(8)
    path = tmp_path / "m.gguf"
    write_model(path, "qwen2", make_weights("qwen2", rng))
    tokens = rng.integers(0, N_VOCAB, 20).tolist()
    outs = []
    for t, tb in [(1, 1), (2, 2), (1, 3), (3, 1)]:
        m = CoreModel(str(path), n_threads=t, n_threads_batch=tb)
        outs.append(m.eval(tokens, 32, n_batch=8, all_logits=True) + m.eval(tokens, 32, n_batch=1, all_logits=True))
    assert all(o == outs[0] for o in outs)


@pytest.mark.parametrize("arch, weights_of, message", [
    ("mamba", "llama", "unsupported model architecture 'mamba'"),  # an architecture we lack
    ("qwen2", "llama", "bias"),  # qwen2 without its Q/K/V biases
    ("llama", "phi3", "ffn_gate"),  # llama with phi3's fused matrices
])
def test_bad_models_are_load_errors(tmp_path, arch, weights_of, message):
    path = tmp_path / "m.gguf"
    w = make_weights("llama" if weights_of == "phi3" else weights_of, np.random.default_rng(4))
    write_model(path, arch, fuse_phi3(w) if weights_of == "phi3" else w)
    with pytest.raises(Exception, match=message):
        _core.Model(str(path))
