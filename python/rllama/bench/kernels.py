"""`python -m rllama bench kernels`: GB/s of weight bytes streamed by gemv (1 token) and GFLOP/s of
gemm (512 tokens) per type and shape, at 1 and 2 threads, beside the streaming-read bandwidth
measured in the same run. Prints JSON lines."""

from __future__ import annotations

import argparse
import json

import gguf
import numpy as np

SHAPES = [(4096, 4096), (1536, 576), (49152, 576)]  # (rows = n_out, cols = n_in)
TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q8_0", "Q4_K", "Q6_K", "F32"]
F16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q8_0": [0], "Q4_K": [0, 2], "Q6_K": [208],
              "Q5_K": [0, 2], "Q2_K": [80, 82], "Q3_K": [108], "IQ4_XS": [0]}


def random_weights(ty: str, rows: int, cols: int, rng) -> bytes:
    qt = gguf.GGMLQuantizationType[ty]
    bs, ts = gguf.GGML_QUANT_SIZES[qt]
    if ty == "F32":
        return rng.standard_normal(rows * cols).astype(np.float32).tobytes()
    n_blocks = rows * cols // bs
    raw = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint8)
    for off in F16_FIELDS[ty]:
        raw[:, off:off + 2] = np.full(n_blocks, 0.01, np.float16).view(np.uint8).reshape(-1, 2)
    return raw.tobytes()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m rllama bench kernels", description=__doc__)
    ap.add_argument("-t", "--threads", default="1,2")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--gemm-tokens", type=int, default=512)
    ap.add_argument("-r", "--repetitions", type=int, default=5)
    args = ap.parse_args(argv)
    from rllama import _core

    rng = np.random.default_rng(0)
    threads = [int(t) for t in args.threads.split(",")]
    bw = {}
    for nt in threads:
        bw[nt] = _core.read_bandwidth(1 << 30, nt, 3)
        print(json.dumps({"bench": "kernels", "metric": "read_bw_gbps", "value": round(bw[nt], 2), "unit": "GB/s",
                          "threads": nt, "bytes": 1 << 30, "simd": _core.simd()}), flush=True)
    for ty in args.types.split(","):
        for rows, cols in SHAPES:
            if cols % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[ty]][0]:
                continue  # not whole blocks per row (e.g. 576 columns of a 256-block K-quant)
            data = random_weights(ty, rows, cols, rng)
            for nt in threads:
                m = _core.KernelMatrix(ty, data, rows, cols, nt)
                s = m.time(1, args.repetitions)
                gbps = len(data) / s / 1e9
                print(json.dumps({"bench": "kernels", "metric": "gemv_gbps", "value": round(gbps, 2), "unit": "GB/s",
                                  "type": ty, "shape": [rows, cols], "threads": nt,
                                  "pct_of_read_bw": round(100 * gbps / bw[nt], 1)}), flush=True)
                n = args.gemm_tokens
                s = m.time(n, max(1, args.repetitions // 2))
                print(json.dumps({"bench": "kernels", "metric": "gemm_gflops", "value": round(2 * rows * cols * n / s / 1e9, 2),
                                  "unit": "GFLOP/s", "type": ty, "shape": [rows, cols], "tokens": n,
                                  "threads": nt}), flush=True)
    return 0
