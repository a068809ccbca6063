"""Dequantization of every supported type equals the gguf package's numpy dequantizer exactly, on
random blocks with valid scales and on every tensor of both real models."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import rllama.gguf
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize

# Byte offsets of the f16 scale fields in each block (made finite so the block is valid).
F16_FIELDS = {
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0], Q.IQ4_NL: [0],
    Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208], Q.IQ4_XS: [0],
}


def random_blocks(qt, n_blocks, rng):
    bs, ts = gguf.GGML_QUANT_SIZES[qt]
    raw = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint8)
    for off in F16_FIELDS.get(qt, []):
        raw[:, off:off + 2] = rng.uniform(-2, 2, n_blocks).astype(np.float16).view(np.uint8).reshape(-1, 2)
    if qt == Q.Q8_K:
        raw[:, 0:4] = rng.uniform(-1, 1, n_blocks).astype(np.float32).view(np.uint8).reshape(-1, 4)
    return raw, bs


def write_tensor(path, qt, raw, n_elems):
    w = gguf.GGUFWriter(str(path), "test")
    if qt == Q.F32:
        w.add_tensor("t", raw.view(np.float32).reshape(1, n_elems))
    elif qt == Q.F16:
        w.add_tensor("t", raw.view(np.float16).reshape(1, n_elems))
    else:  # bytes, one row
        w.add_tensor("t", raw.view(np.uint8).reshape(1, -1), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("qt", [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K,
                                Q.Q8_K, Q.IQ4_NL, Q.IQ4_XS, Q.BF16, Q.F16, Q.F32])
def test_random_blocks_match_gguf(tmp_path, qt):
    rng = np.random.default_rng(int(qt))
    if qt in (Q.F32, Q.F16, Q.BF16):
        vals = rng.standard_normal(1024).astype(np.float32)
        raw = (vals if qt == Q.F32 else vals.astype(np.float16) if qt == Q.F16
               else (vals.view(np.uint32) >> 16).astype(np.uint16)).view(np.uint8)
        n = 1024
    else:
        blocks, bs = random_blocks(qt, 16, rng)
        raw, n = blocks.reshape(-1), 16 * bs
    try:
        ref = dequantize(raw.reshape(1, -1), qt).reshape(-1)
    except NotImplementedError:
        pytest.skip(f"gguf has no numpy dequantizer for {qt.name}")
    p = tmp_path / "t.gguf"
    write_tensor(p, qt, raw, n)
    ours = rllama.gguf.read(p).tensor("t").dequantize().reshape(-1)
    np.testing.assert_array_equal(ours, ref.astype(np.float32))


@pytest.mark.parametrize("model", ["smollm2_path", "gemma3_path"])
def test_every_real_tensor_matches_gguf(model, request):
    path = request.getfixturevalue(model)
    ref = gguf.GGUFReader(str(path))
    ours = rllama.gguf.read(path)
    for t in ref.tensors:
        want = dequantize(t.data, t.tensor_type).reshape(-1).astype(np.float32)
        got = ours.tensor(t.name).dequantize().reshape(-1)
        np.testing.assert_array_equal(got, want, err_msg=t.name)


def test_unsupported_type_is_a_clean_error(tmp_path):
    rng = np.random.default_rng(0)
    raw, bs = random_blocks(Q.IQ2_XXS, 2, rng)
    p = tmp_path / "iq2.gguf"
    write_tensor(p, Q.IQ2_XXS, raw.reshape(-1), 2 * bs)
    with pytest.raises(rllama.InvalidRequestError, match="not supported"):
        rllama.gguf.read(p).tensor("t").dequantize()


def _rows_to_quantize(rng, n_blocks, bs):
    x = rng.standard_normal((n_blocks, bs)).astype(np.float32) * rng.uniform(0.01, 10, (n_blocks, 1)).astype(np.float32)
    x[0] = 0.0  # an all-zero block: scale 0
    x[1] = 0.75  # a constant block: max == min
    x[2, 5] = -x[2].__abs__().max() * 3  # a negative extreme
    return x.reshape(-1)


@pytest.mark.parametrize("qt", [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.BF16, Q.F16, Q.F32])
def test_quantize_matches_gguf(qt):
    """Our f32 -> block quantizers (KV cache types) give gguf's reference bytes exactly."""
    rng = np.random.default_rng(int(qt))
    bs = gguf.GGML_QUANT_SIZES[qt][0]
    x = _rows_to_quantize(rng, 64, 32 if bs == 1 else bs)
    want = gguf.quants.quantize(x.reshape(1, -1), qt).tobytes()
    got = rllama.gguf.quantize(x, qt.name)
    assert got == want


def test_quantize_iq4_nl_snaps_to_the_grid_with_a_refined_scale():
    """No numpy reference quantizes IQ4_NL: every value must sit on the grid point nearest x/d, and
    the refined scale must fit at least as well (x²-weighted) as the plain max/127 one."""
    rng = np.random.default_rng(7)
    x = _rows_to_quantize(rng, 64, 32)
    raw = np.frombuffer(rllama.gguf.quantize(x, "IQ4_NL"), dtype=np.uint8).reshape(-1, 18)
    y = dequantize(raw, Q.IQ4_NL).reshape(-1, 32)
    grid = np.array(gguf.quants.IQ4_NL.kvalues, dtype=np.float32)
    d = raw[:, :2].copy().view(np.float16).astype(np.float32).reshape(-1)
    xb = x.reshape(-1, 32)
    for b in range(len(xb)):
        if d[b] == 0:
            assert not np.any(xb[b]) or np.all(y[b] == 0)
            continue
        near = grid[np.abs(xb[b][:, None] / d[b] - grid[None, :]).argmin(axis=1)]
        np.testing.assert_allclose(y[b], d[b] * near, rtol=1e-6)
        m = xb[b][np.abs(xb[b]).argmax()]
        d0 = np.float32(m / 127)
        plain = d0 * grid[np.abs(xb[b][:, None] / d0 - grid[None, :]).argmin(axis=1)]
        w = xb[b] ** 2
        assert (w * (y[b] - xb[b]) ** 2).sum() <= (w * (plain - xb[b]) ** 2).sum() * 1.01 + 1e-12


def test_quantize_rejects_bad_input():
    with pytest.raises(rllama.RllamaError, match="multiple"):
        rllama.gguf.quantize(np.zeros(31, np.float32), "Q4_0")
    with pytest.raises(rllama.RllamaError, match="not supported"):
        rllama.gguf.quantize(np.zeros(256, np.float32), "Q4_K")
