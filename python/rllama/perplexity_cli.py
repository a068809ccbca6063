"""`python -m rllama perplexity -m MODEL -f FILE -c 512`: perplexity like llama.cpp's tool."""

from __future__ import annotations

import sys

from rllama.model_args import Parser, add_model_args, int_in, model_kwargs, read_text_file
from rllama.validate import N_CTX_MAX, perplexity_args


def main(argv: list[str]) -> int:
    ap = Parser(prog="python -m rllama perplexity", description=__doc__)
    # Each chunk of -c tokens scores its second half: a chunk needs a few tokens.
    add_model_args(ap, n_ctx=512, ctx_type=int_in(4, N_CTX_MAX, " (tokens per chunk)"))
    ap.add_argument("-f", "--file", required=True)
    ap.add_argument("--chunks", type=int_in(-1, None, " (-1: all)"), default=-1)
    args = ap.parse_args(argv)
    perplexity_args(args.ctx_size, args.chunks)
    text = read_text_file(args.file, "text file")

    from rllama.model import Model

    model = Model(args.model, **model_kwargs(args))

    def progress(i: int, n: int, ppl: float) -> None:
        sys.stdout.write(f"[{i}]{ppl:.4f},")
        sys.stdout.flush()

    r = model.perplexity(text, n_ctx=args.ctx_size, n_chunks=args.chunks, progress=progress)
    print(f"\nFinal estimate: PPL = {r['ppl']:.4f}")
    return 0
