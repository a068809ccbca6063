"""`python -m rllama pull NAME|URL`: fetch a built-in model or a URL into the cache."""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m rllama pull", description=__doc__)
    ap.add_argument("model", help="built-in name (smollm2, gemma3) or http(s) URL")
    args = ap.parse_args(argv)
    from rllama.models import resolve

    print(resolve(args.model))
    return 0
