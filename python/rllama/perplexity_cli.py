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
    ap.add_argument("--chunks", type=int, default=-1)
    args = ap.parse_args(argv)

    from rllama.model import Model

    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    model = Model(args.model, n_ctx=args.ctx_size, n_threads=args.threads, n_ubatch=args.batch_size)

    def progress(i: int, n: int, ppl: float) -> None:
        sys.stdout.write(f"[{i}]{ppl:.4f},")
        sys.stdout.flush()

    r = model.perplexity(text, n_ctx=args.ctx_size, n_chunks=args.chunks, progress=progress)
    print(f"\nFinal estimate: PPL = {r['ppl']:.4f}")
    return 0
