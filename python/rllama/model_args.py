"""The model-loading flags `run` and `perplexity` share with llama.cpp's tools (threads, context,
KV cache types, RoPE), and their translation into `rllama.Model` keyword arguments."""

from __future__ import annotations

import argparse
from typing import Any

KV_TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
FLASH_ATTN = ("on", "off", "auto")


def add_model_args(ap: argparse.ArgumentParser, n_ctx: int) -> None:
    ap.add_argument("-m", "--model", default=None, help="GGUF path, URL or built-in name (default smollm2)")
    ap.add_argument("-c", "--ctx-size", type=int, default=n_ctx)
    ap.add_argument("-b", "--batch-size", type=int, default=512)
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("-tb", "--threads-batch", type=int, default=None, help="threads for prompts (default: --threads)")
    ap.add_argument("-ctk", "--cache-type-k", default="f16", choices=KV_TYPES, help="KV cache type for K")
    ap.add_argument("-ctv", "--cache-type-v", default="f16", choices=KV_TYPES, help="KV cache type for V")
    ap.add_argument("-fa", "--flash-attn", nargs="?", const="on", default="auto", choices=FLASH_ATTN,
                    help="attention path: on (one pass, online softmax), off (score rows), auto (on for "
                         "token generation, off for prompts); a bare -fa is on")
    ap.add_argument("--rope-scaling", default=None, choices=["none", "linear", "yarn"])
    ap.add_argument("--rope-freq-base", type=float, default=None)
    ap.add_argument("--rope-freq-scale", type=float, default=None)
    ap.add_argument("--yarn-orig-ctx", type=int, default=None)
    ap.add_argument("--yarn-ext-factor", type=float, default=None)
    ap.add_argument("--yarn-attn-factor", type=float, default=None)
    ap.add_argument("--yarn-beta-slow", type=float, default=None)
    ap.add_argument("--yarn-beta-fast", type=float, default=None)


def model_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"n_ctx": args.ctx_size, "n_threads": args.threads, "n_threads_batch": args.threads_batch,
            "n_ubatch": args.batch_size,
            "cache_type_k": args.cache_type_k, "cache_type_v": args.cache_type_v, "flash_attn": args.flash_attn,
            "rope_scaling": args.rope_scaling, "rope_freq_base": args.rope_freq_base,
            "rope_freq_scale": args.rope_freq_scale, "yarn_orig_ctx": args.yarn_orig_ctx,
            "yarn_ext_factor": args.yarn_ext_factor, "yarn_attn_factor": args.yarn_attn_factor,
            "yarn_beta_slow": args.yarn_beta_slow, "yarn_beta_fast": args.yarn_beta_fast}
