"""`python -m rllama run -m MODEL -p PROMPT -n N`: generate, stream the text, print timings."""

from __future__ import annotations

import sys

from rllama.model_args import Parser, add_model_args, int_in, model_kwargs, read_text_file
from rllama.validate import INT32_MAX


def main(argv: list[str]) -> int:
    ap = Parser(prog="python -m rllama run", description=__doc__)
    add_model_args(ap, n_ctx=4096)
    ap.add_argument("-p", "--prompt", default=None, help="prompt text (default: read stdin)")
    ap.add_argument("-f", "--file", default=None, help="read the prompt from a file")
    ap.add_argument("-n", "--n-predict", type=int_in(-1, INT32_MAX, " (-1: until the end)"), default=128)
    ap.add_argument("--temp", type=float, default=0.8)
    ap.add_argument("--top-k", type=int_in(0, INT32_MAX), default=40)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--min-p", type=float, default=0.05)
    ap.add_argument("--repeat-penalty", type=float, default=1.0)
    ap.add_argument("-s", "--seed", type=int_in(-1, 2**32 - 1), default=-1)
    ap.add_argument("--grammar", default=None)
    ap.add_argument("--chat", action="store_true", help="wrap the prompt as one user message with the chat template")
    args = ap.parse_args(argv)

    from rllama.model import Model

    if args.file:
        prompt = read_text_file(args.file, "prompt file")
    elif args.prompt is not None:
        prompt = args.prompt
    else:
        prompt = sys.stdin.read()
    model = Model(args.model, **model_kwargs(args))
    if args.chat:
        prompt = model.apply_chat_template([{"role": "user", "content": prompt}])
    opts = {"n_predict": args.n_predict, "temperature": args.temp, "top_k": args.top_k, "top_p": args.top_p,
            "min_p": args.min_p, "repeat_penalty": args.repeat_penalty, "seed": args.seed, "stream": True}
    if args.grammar:
        opts["grammar"] = args.grammar
    final = {}
    sys.stdout.write(prompt if not args.chat else "")
    for chunk in model.complete(prompt, **opts):
        if chunk.get("stop"):
            final = chunk
        else:
            sys.stdout.write(chunk["content"])
            sys.stdout.flush()
    t = final["timings"]
    print(file=sys.stdout)
    print(f"\nprompt: {t['prompt_n']} tokens, {t['prompt_ms']:.1f} ms, {t['prompt_per_second']:.1f} t/s",
          file=sys.stderr)
    print(f"gen:    {t['predicted_n']} tokens, {t['predicted_ms']:.1f} ms, {t['predicted_per_second']:.1f} t/s"
          f" (stop: {final['stop_type']})", file=sys.stderr)
    return 0
