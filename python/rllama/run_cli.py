"""`python -m rllama run -m MODEL -p PROMPT -n N`: generate, stream the text, print timings."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m rllama run", description=__doc__)
    ap.add_argument("-m", "--model", default=None, help="GGUF path, URL or built-in name (default smollm2)")
    ap.add_argument("-p", "--prompt", default=None, help="prompt text (default: read stdin)")
    ap.add_argument("-f", "--file", default=None, help="read the prompt from a file")
    ap.add_argument("-n", "--n-predict", type=int, default=128)
    ap.add_argument("-c", "--ctx-size", type=int, default=4096)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-ctk", "--cache-type-k", default="f16", help="KV cache type for K (f32, f16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1)")
    ap.add_argument("-ctv", "--cache-type-v", default="f16", help="KV cache type for V")
    ap.add_argument("-b", "--batch-size", type=int, default=512)
    ap.add_argument("--temp", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=40)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--min-p", type=float, default=0.05)
    ap.add_argument("--repeat-penalty", type=float, default=1.0)
    ap.add_argument("-s", "--seed", type=int, default=-1)
    ap.add_argument("--grammar", default=None)
    ap.add_argument("--chat", action="store_true", help="wrap the prompt as one user message with the chat template")
    args = ap.parse_args(argv)

    from rllama.model import Model

    if args.file:
        with open(args.file, encoding="utf-8") as f:
            prompt = f.read()
    elif args.prompt is not None:
        prompt = args.prompt
    else:
        prompt = sys.stdin.read()
    model = Model(args.model, n_ctx=args.ctx_size, n_threads=args.threads, n_ubatch=args.batch_size,
                  cache_type_k=args.cache_type_k, cache_type_v=args.cache_type_v)
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
