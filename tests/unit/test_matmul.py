"""matmul against numpy (dequantized W times quantized-then-dequantized x), for every weight type
the kernels dot, at every SIMD level this CPU has (forced through RLLAMA_SIMD in a subprocess).
Every level gives the same bits, single tokens and batches alike: all follow llama.cpp's x86
summation order (ggml's AVX2 dots for the legacy types and Q6_K, its repacked kernels' for Q4_K)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

CODE = r"""
import json, sys
import numpy as np, gguf
from gguf.quants import dequantize
from rllama import _core
sys.path.insert(0, {here!r})
from test_quant import random_blocks
out = {{"simd": _core.simd(), "results": {{}}}}
rng = np.random.default_rng(7)
for ty in ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"]:
    qt = gguf.GGMLQuantizationType[ty]
    bs, ts = gguf.GGML_QUANT_SIZES[qt]
    rows, cols, n = 40, 512, 5
    raw, _ = random_blocks(qt, rows * cols // bs, rng)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    for threads in (1, 2):
        m = _core.KernelMatrix(ty, raw.tobytes(), rows, cols, threads)
        y = np.frombuffer(m.matmul(x.tobytes(), n), dtype=np.float32).reshape(n, rows)
        out["results"][f"{{ty}}/{{threads}}"] = y.tolist()
        y1 = np.frombuffer(m.matmul(x[:1].tobytes(), 1), dtype=np.float32)
        out["results"][f"{{ty}}/gemv{{threads}}"] = y1.tolist()
    out["results"][ty + "/w"] = dequantize(raw.reshape(rows, -1), qt).astype(np.float64).tolist()
    out["results"][ty + "/x"] = x.tolist()
print(json.dumps(out))
"""


def run_level(level: str) -> dict:
    here = os.path.dirname(__file__)
    env = dict(os.environ, RLLAMA_SIMD=level)
    r = subprocess.run([sys.executable, "-c", CODE.format(here=here)], env=env, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def q8_dequant(x: np.ndarray, block: int) -> np.ndarray:
    """Activations as the kernels see them: 8-bit blocks (Q8_0/Q8_1 for 32, Q8_K for 256)."""
    xb = x.reshape(x.shape[0], -1, block).astype(np.float32)
    if block == 32:
        amax = np.abs(xb).max(-1, keepdims=True)
        d = (amax / np.float32(127)).astype(np.float16).astype(np.float64)
        q = np.rint(xb * np.where(amax > 0, np.float32(127) / np.where(amax > 0, amax, 1), 0))
    else:
        idx = np.abs(xb).argmax(-1)[..., None]
        mx = np.take_along_axis(xb, idx, -1)
        iscale = np.float32(-127) / mx
        q = np.minimum(np.rint(iscale * xb), 127)
        d = (np.float32(1) / iscale).astype(np.float64)
    return (q * d).reshape(x.shape)


@pytest.fixture(scope="module")
def levels():
    found = {}
    for level in ("scalar", "avx2", "avxvnni", "avx512"):
        out = run_level(level)
        found.setdefault(out["simd"], out)  # a level the CPU lacks falls back to one it has
    return found


def test_matches_numpy(levels):
    out = next(iter(levels.values()))["results"]
    for key in [k for k in out if k.endswith("/1")]:
        ty = key.split("/")[0]
        w, x = np.array(out[ty + "/w"]), np.array(out[ty + "/x"])
        block = 256 if ty.endswith("_K") or ty == "IQ4_XS" else 32
        want = q8_dequant(x, block) @ w.T  # every dotted type quantizes its activations
        got = np.array(out[key])
        scale = np.abs(w).sum(1).max() * np.abs(x).max()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * scale, err_msg=ty)
        np.testing.assert_array_equal(np.array(out[ty + "/2"]), got)  # thread count changes nothing
    for level, found in levels.items():
        for ty in {k.split("/")[0] for k in found["results"]}:
            # Single tokens take the gemv kernels (sixteen rows at once on AVX-512, then four).
            assert found["results"][ty + "/gemv1"] == found["results"][ty + "/gemv2"], (level, ty)


def test_every_level_agrees(levels):
    assert "scalar" in levels
    base = levels["scalar"]["results"]
    for level, out in levels.items():
        for key, val in out["results"].items():
            assert val == base[key], (level, key)


def test_kernel_matrix_of_no_rows_or_columns_is_an_error_or_empty():
    # Shapes with nothing in them: a Python exception or an empty result, never a panic.
    from rllama import _core

    for ty, rows, cols in [("Q4_0", 0, 32), ("Q4_0", 1, 0), ("F32", 0, 0)]:
        try:
            m = _core.KernelMatrix(ty, b"", rows, cols, 1)
        except (ValueError, _core.RllamaError):
            continue
        assert m.matmul(bytes(4 * cols), 1) == bytes(4 * rows)  # empty sums are zero
        assert m.time(1, 1, cold=True) >= 0 and m.time_read(1) >= 0
