"""`python -m rllama bench kernels|tokenizer|-m MODEL ...`: route to the benchmark modules."""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {"kernels": "rllama.bench.kernels", "tokenizer": "rllama.bench.tokenizer",
               "load": "rllama.bench.load", "serve": "rllama.bench.serve"}


def main(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        name, rest = SUBCOMMANDS[argv[0]], argv[1:]
    else:
        name, rest = "rllama.bench.model", argv
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        print(f"rllama: error: benchmark {name} is not available ({e})", file=sys.stderr)
        return 1
    return int(module.main(rest) or 0)
