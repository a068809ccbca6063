"""`python -m rllama perplexity -m MODEL -f FILE -c 512`: perplexity like llama.cpp's tool."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m rllama perplexity", description=__doc__)
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("-f", "--file", required=True)
    ap.add_argument("-c", "--ctx-size", type=int, default=512)
    ap.add_argument("-b", "--batch-size", type=int, default=512)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-ctk", "--cache-type-k", default="f16", help="KV cache type for K (f32, f16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1)")
    ap.add_argument("-ctv", "--cache-type-v", default="f16", help="KV cache type for V")
    ap.add_argument("--chunks", type=int, default=-1)
    args = ap.parse_args(argv)

    from rllama.model import Model

    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    model = Model(args.model, n_ctx=args.ctx_size, n_threads=args.threads, n_ubatch=args.batch_size,
                  cache_type_k=args.cache_type_k, cache_type_v=args.cache_type_v)

    def progress(i: int, n: int, ppl: float) -> None:
        sys.stdout.write(f"[{i}]{ppl:.4f},")
        sys.stdout.flush()

    r = model.perplexity(text, n_ctx=args.ctx_size, n_chunks=args.chunks, progress=progress)
    print(f"\nFinal estimate: PPL = {r['ppl']:.4f}")
    return 0
