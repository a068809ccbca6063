"""`python -m rllama bench kernels`: GB/s of weight bytes streamed by gemv (1 token; from DRAM, "cold",
and from the caches, "warm") and GFLOP/s of gemm (512 tokens) per type and shape, at 1 and 2 threads,
beside the streaming-read bandwidth measured in the same run. A cold gemv is also held against a
plain read of as many bytes from DRAM on the same threads, timed alternately with it (the machines
are shared: the bandwidth moves during a run, and a few MiB read cold cost more per byte than a
GiB). With `-m MODEL`, the model's own weight matrices (one per layer role and type, and the output
matrix, tied to the token embeddings or not) instead of random ones. Prints JSON lines."""

from __future__ import annotations

import json

import numpy as np

from rllama import _core
from rllama.model_args import Parser, int_in, int_list
from rllama.validate import N_THREADS_MAX

SHAPES = [(4096, 4096), (1536, 576), (49152, 576)]  # (rows = n_out, cols = n_in)
FLOATS = ("F32", "F16", "BF16")
# Byte offsets of each block's f16 scales (set to a sane value; the other bytes are random).
F16_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "IQ4_NL": [0],
              "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
              "IQ4_XS": [0]}
TYPES = [*F16_FIELDS, *FLOATS]  # every type with tiles, and the float ones


def random_weights(ty: str, rows: int, cols: int, rng) -> bytes:
    bs, ts = _core.type_sizes(ty)
    if ty in FLOATS:
        x = rng.standard_normal(rows * cols).astype(np.float32)
        if ty == "F16":
            return x.astype(np.float16).tobytes()
        if ty == "BF16":  # the high half of each f32 (truncation is as good as rounding here)
            return (x.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        return x.tobytes()
    n_blocks = rows * cols // bs
    raw = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint8)
    for off in F16_FIELDS[ty]:
        raw[:, off:off + 2] = np.full(n_blocks, 0.01, np.float16).view(np.uint8).reshape(-1, 2)
    return raw.tobytes()


def model_matrices(path: str):
    """(label, type, rows, cols, bytes) of each distinct weight matrix role of a model's layers (the
    first layer that has it, per type), and its output matrix (the token embeddings where the
    model ties them, as gemma3 does: the largest gemv of a decode step)."""
    from rllama.gguf import GgufReader
    from rllama.models import resolve

    tensors = GgufReader(resolve(path)).tensors
    output = "output.weight" if any(t.name == "output.weight" for t in tensors) else "token_embd.weight"
    seen = set()
    for t in tensors:
        if len(t.shape) != 2 or not (t.name.startswith("blk.") or t.name == output):
            continue
        role = t.name.split(".", 2)[-1] if t.name.startswith("blk.") else t.name
        key = (role, t.type_name, t.shape)
        if key not in seen:
            seen.add(key)
            yield role, t.type_name, t.shape[1], t.shape[0], t.raw()


def random_matrices(types: list[str], rng):
    for ty in types:
        for rows, cols in SHAPES:
            if cols % _core.type_sizes(ty)[0]:
                continue  # not whole blocks per row (e.g. 576 columns of a 256-block K-quant)
            yield None, ty, rows, cols, random_weights(ty, rows, cols, rng)


def main(argv: list[str]) -> int:
    ap = Parser(prog="python -m rllama bench kernels", description=__doc__)
    ap.add_argument("-t", "--threads", type=int_list(1, N_THREADS_MAX), default=[1, 2])
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("-m", "--model", help="time this model's weight matrices (a path or a known name)")
    ap.add_argument("--gemm-tokens", type=int_in(1, 65536), default=512)
    ap.add_argument("-r", "--repetitions", type=int_in(1, 10_000), default=5)
    args = ap.parse_args(argv)

    types = args.types.split(",")
    known = [*F16_FIELDS, *FLOATS]
    if not args.model and (bad := [t for t in types if t not in known]):
        raise SystemExit(f"error: no random weights for type {', '.join(bad)} (known: {', '.join(known)})")
    rng = np.random.default_rng(0)
    threads = args.threads
    bw = {}
    for nt in threads:
        bw[nt] = _core.read_bandwidth(1 << 30, nt, 3)
        print(json.dumps({"bench": "kernels", "metric": "read_bw_gbps", "value": round(bw[nt], 2), "unit": "GB/s",
                          "threads": nt, "bytes": 1 << 30, "simd": _core.simd()}), flush=True)
    mats = model_matrices(args.model) if args.model else random_matrices(types, rng)
    for role, ty, rows, cols, data in mats:
        where = {"type": ty, "shape": [rows, cols]} | ({"tensor": role} if role else {})
        for nt in threads:
            m = _core.KernelMatrix(ty, data, rows, cols, nt)
            # Cold: the weights come from DRAM, as in a decode step (the figure to hold against the
            # read bandwidth); warm: from the caches the previous repetition filled.
            gemv_s = read_s = float("inf")
            for _ in range(args.repetitions):  # alternately, best of each
                read_s = min(read_s, m.time_read(1))
                gemv_s = min(gemv_s, m.time(1, 1, cold=True))
            read = len(data) / read_s / 1e9
            for cache in ("cold", "warm"):
                s = gemv_s if cache == "cold" else m.time(1, args.repetitions)
                gbps = len(data) / s / 1e9
                same = {"read_gbps": round(read, 2), "pct_of_read": round(100 * gbps / read, 1)} if cache == "cold" else {}
                print(json.dumps({"bench": "kernels", "metric": "gemv_gbps", "value": round(gbps, 2), "unit": "GB/s",
                                  **where, "threads": nt, "cache": cache,
                                  "pct_of_read_bw": round(100 * gbps / bw[nt], 1), **same}), flush=True)
            n = args.gemm_tokens
            s = m.time(n, max(1, args.repetitions // 2))
            print(json.dumps({"bench": "kernels", "metric": "gemm_gflops", "value": round(2 * rows * cols * n / s / 1e9, 2),
                              "unit": "GFLOP/s", **where, "tokens": n, "threads": nt}), flush=True)
    return 0
