"""The model-loading flags `run` and `perplexity` share with llama.cpp's tools (threads, context,
KV cache types, RoPE), and their translation into `rllama.Model` keyword arguments."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, NoReturn

from rllama.errors import InvalidRequestError
from rllama.validate import N_CTX_MAX, N_THREADS_MAX

KV_TYPES = ("f32", "f16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")
FLASH_ATTN = ("on", "off", "auto")


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (`prog: error: ...` and exit status 2), no usage dump."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def int_in(lo: int, hi: int | None = None, what: str = "") -> Any:
    """An argparse `type`: an int in [lo, hi]."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if v < lo or (hi is not None and v > hi):
            rng = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{v} is out of range: must be {rng}{what}")
        return v

    parse.__name__ = "integer"
    return parse


def int_list(lo: int, hi: int | None = None) -> Any:
    """An argparse `type`: comma-separated ints, each in [lo, hi]."""
    one = int_in(lo, hi)

    def parse(text: str) -> list[int]:
        vals = [one(x.strip()) for x in text.split(",") if x.strip()]
        if not vals:
            raise argparse.ArgumentTypeError(f"{text!r} holds no numbers")
        return vals

    parse.__name__ = "list of integers"
    return parse


POSITIVE_THREADS = int_in(1, N_THREADS_MAX)


def read_text_file(path: str, what: str = "file") -> str:
    """A UTF-8 text file's contents; each failure is one InvalidRequestError line."""
    if os.path.isdir(path):
        raise InvalidRequestError(f"{what} {path}: is a directory")
    if os.path.exists(path) and not os.path.isfile(path):
        raise InvalidRequestError(f"{what} {path}: is not a regular file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise InvalidRequestError(f"{what} {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequestError(
            f"{what} {path}: not UTF-8 text (byte 0x{data[e.start]:02X} at offset {e.start})") from None


def add_model_args(ap: argparse.ArgumentParser, n_ctx: int, ctx_type: Any = None) -> None:
    ap.add_argument("-m", "--model", default=None, help="GGUF path, URL or built-in name (default smollm2)")
    ap.add_argument("-c", "--ctx-size", type=ctx_type or int_in(0, N_CTX_MAX, " (0: the model's training context)"),
                    default=n_ctx)
    ap.add_argument("-b", "--batch-size", type=int_in(1, N_CTX_MAX), default=512)
    ap.add_argument("-t", "--threads", type=POSITIVE_THREADS, default=None)
    ap.add_argument("-tb", "--threads-batch", type=POSITIVE_THREADS, default=None,
                    help="threads for prompts (default: --threads)")
    ap.add_argument("-ctk", "--cache-type-k", default="f16", choices=KV_TYPES, help="KV cache type for K")
    ap.add_argument("-ctv", "--cache-type-v", default="f16", choices=KV_TYPES, help="KV cache type for V")
    ap.add_argument("-fa", "--flash-attn", nargs="?", const="on", default="auto", choices=FLASH_ATTN,
                    help="attention path: on (one pass, online softmax), off (score rows), auto (on for "
                         "token generation, off for prompts); a bare -fa is on")
    ap.add_argument("--rope-scaling", default=None, choices=["none", "linear", "yarn"])
    ap.add_argument("--rope-freq-base", type=float, default=None)
    ap.add_argument("--rope-freq-scale", type=float, default=None)
    ap.add_argument("--yarn-orig-ctx", type=int_in(0, N_CTX_MAX), default=None)
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
