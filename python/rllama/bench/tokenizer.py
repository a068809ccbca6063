"""Tokenizer throughput: ~1 MB of mixed English and code through each real model's tokenizer
on one core. Prints JSON lines ``{"bench": "tokenizer", "metric": "throughput", "value": MB/s,
"unit": "MB/s", "model": ...}`` (plus warm-cache, small-call and detokenize throughput).

    python -m rllama bench tokenizer [--models smollm2,gemma3] [--mb 1.0] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from rllama.model_args import Parser, int_in

ENGLISH = (
    "The quick brown fox jumps over the lazy dog. Tokenizers turn text into integers, and "
    "the integers back into text; a good one is fast, exact and never loses a byte. "
    "Don't forget: it's the 3rd of May, 2024 -- prices rose 12.5% (from $1,234 to $1,388)!\n"
)


def _english() -> str:
    """English prose: the GPL text next to the golden data when present, else a stock paragraph."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        p = parent.parent / "shared" / "golden" / "gpl3.txt"
        if p.exists():
            return p.read_text(encoding="utf-8")
    return ENGLISH * 50


def _code() -> str:
    """Python source: this package's own modules."""
    root = Path(__file__).resolve().parents[1]
    parts = [p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.py"))]
    return "\n".join(parts)


def corpus(n_bytes: int) -> str:
    """Alternating blocks of English and code, cut to about ``n_bytes`` UTF-8 bytes."""
    en, code = _english(), _code()
    out: list[str] = []
    size = 0
    i = 0
    block = 4096
    while size < n_bytes:
        src = en if i % 2 == 0 else code
        start = (i * 7919) % max(1, len(src) - block)
        piece = src[start : start + block]
        out.append(piece)
        size += len(piece.encode("utf-8"))
        i += 1
    return "".join(out)


def _pin_one_core() -> None:
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[0]})
    except (AttributeError, OSError):
        pass


def _megabytes(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < v <= 1024:
        raise argparse.ArgumentTypeError(f"{v:g} is out of range: must be > 0 and <= 1024")
    return v


def main(argv: list[str] | None = None) -> int:
    ap = Parser(prog="python -m rllama bench tokenizer", description=__doc__)
    ap.add_argument("--models", default="smollm2,gemma3", help="comma-separated names or GGUF paths")
    ap.add_argument("--mb", type=_megabytes, default=1.0, help="corpus size in MB")
    ap.add_argument("--repeat", type=int_in(1, 10_000), default=3, help="runs per model; the best is reported")
    args = ap.parse_args(argv)

    import rllama.models
    from rllama.tokenizer import Tokenizer

    _pin_one_core()
    text = corpus(int(args.mb * 1_000_000))
    n_bytes = len(text.encode("utf-8"))
    for name in [m for m in args.models.split(",") if m]:
        path = Path(name) if name.endswith(".gguf") else rllama.models.resolve(name)
        # "throughput": a freshly loaded tokenizer each run, so only words repeated within the
        # text hit the word cache; "throughput_warm": the same tokenizer again (cache kept
        # between calls, as a server sees it); "throughput_1k_calls": the text in 1000-character
        # calls on a fresh tokenizer.
        best_cold = best_warm = best_dec = best_small = float("inf")
        ids: list[int] = []
        chunks = [text[i : i + 1000] for i in range(0, len(text), 1000)]
        tok = Tokenizer.from_gguf(path)
        for _ in range(max(1, args.repeat)):
            tok = Tokenizer.from_gguf(path)
            t0 = time.perf_counter()
            ids = tok.tokenize(text, add_special=False, parse_special=True)
            best_cold = min(best_cold, time.perf_counter() - t0)
            t0 = time.perf_counter()
            tok.tokenize(text, add_special=False, parse_special=True)
            best_warm = min(best_warm, time.perf_counter() - t0)
            t0 = time.perf_counter()
            tok.detokenize(ids)
            best_dec = min(best_dec, time.perf_counter() - t0)
            small = Tokenizer.from_gguf(path)
            t0 = time.perf_counter()
            for c in chunks:
                small.tokenize(c)
            best_small = min(best_small, time.perf_counter() - t0)
        common = {
            "bench": "tokenizer",
            "unit": "MB/s",
            "model": name,
            "tokenizer": tok.model,
            "bytes": n_bytes,
            "tokens": len(ids),
            "threads": 1,
        }
        for metric, secs in (
            ("throughput", best_cold),
            ("throughput_warm", best_warm),
            ("throughput_1k_calls", best_small),
            ("detokenize_throughput", best_dec),
        ):
            print(json.dumps({**common, "metric": metric, "value": round(n_bytes / secs / 1e6, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
