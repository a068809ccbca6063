"""`python -m rllama perplexity -m MODEL -f FILE -c 512`: perplexity like llama.cpp's tool."""

from __future__ import annotations

import argparse
import sys

from rllama.model_args import add_model_args, model_kwargs


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m rllama perplexity", description=__doc__)
    add_model_args(ap, n_ctx=512)
    ap.add_argument("-f", "--file", required=True)
    ap.add_argument("--chunks", type=int, default=-1)
    args = ap.parse_args(argv)

    from rllama.model import Model

    with open(args.file, encoding="utf-8") as f:
        text = f.read()
    model = Model(args.model, **model_kwargs(args))

    def progress(i: int, n: int, ppl: float) -> None:
        sys.stdout.write(f"[{i}]{ppl:.4f},")
        sys.stdout.flush()

    r = model.perplexity(text, n_ctx=args.ctx_size, n_chunks=args.chunks, progress=progress)
    print(f"\nFinal estimate: PPL = {r['ppl']:.4f}")
    return 0
