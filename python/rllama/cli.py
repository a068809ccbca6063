"""`python -m rllama` command line: serve, run, inspect, pull, bench, perplexity.

Each subcommand lives in its own module and exposes `main(argv) -> int`; this file only routes.
"""

from __future__ import annotations

import importlib
import os
import sys

COMMANDS = {
    "serve": ("rllama.serve_cli", "start the HTTP server (llama-server flags)"),
    "run": ("rllama.run_cli", "generate from a prompt and print timings"),
    "inspect": ("rllama.inspect_cli", "summarize a GGUF file or built-in model"),
    "pull": ("rllama.pull_cli", "fetch a built-in model or URL into the cache"),
    "bench": ("rllama.bench.cli", "benchmarks: kernels, tokenizer, or a model (-m)"),
    "perplexity": ("rllama.perplexity_cli", "perplexity of a model on a text file"),
}


def usage() -> str:
    lines = ["usage: python -m rllama COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<11} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"rllama: unknown command {cmd!r} (commands: {', '.join(COMMANDS)}; see --help)", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd][0])
    from rllama.errors import RllamaError

    # One line and a non-zero status for every failure; RLLAMA_DEBUG=1 shows the traceback of
    # an unexpected one.
    try:
        return int(module.main(rest) or 0)
    except RllamaError as e:
        print(f"rllama: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `rllama run ... | head`
        return 141
    except (OSError, UnicodeError, ValueError, OverflowError, MemoryError) as e:
        if os.environ.get("RLLAMA_DEBUG"):
            raise
        print(f"rllama: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
