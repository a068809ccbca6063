"""`python -m rllama inspect FILE|NAME [--json]`: a short summary of a GGUF model."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

BIG_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")


def summary(path: str) -> dict[str, Any]:
    from rllama.gguf import read

    f = read(path)
    m = f.metadata
    arch = m.get("general.architecture", "?")

    def a(key: str) -> Any:
        return m.get(f"{arch}.{key}")

    types = Counter(t.type_name for t in f.tensors)
    tokens = m.get("tokenizer.ggml.tokens")
    return {
        "file": str(path),
        "name": m.get("general.name"),
        "architecture": arch,
        "parameters": sum(t.n_elements for t in f.tensors),
        "layers": a("block_count"),
        "embedding": a("embedding_length"),
        "feed_forward": a("feed_forward_length"),
        "heads": a("attention.head_count"),
        "kv_heads": a("attention.head_count_kv"),
        "context_length": a("context_length"),
        "vocab_size": a("vocab_size") or (len(tokens) if isinstance(tokens, list) else None),
        "tokenizer": m.get("tokenizer.ggml.model"),
        "tokenizer_pre": m.get("tokenizer.ggml.pre"),
        "quant_types": dict(types.most_common()),
        "chat_template": "tokenizer.chat_template" in m,
        "file_size": f.file_size,
        "gguf_version": f.version,
    }


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m rllama inspect", description=__doc__)
    ap.add_argument("model", help="GGUF path, URL or built-in name")
    ap.add_argument("--json", action="store_true", help="full metadata (big token arrays as their lengths)")
    args = ap.parse_args(argv)
    from rllama.gguf import read
    from rllama.models import resolve

    path = resolve(args.model)
    if args.json:
        f = read(path)
        meta = {k: (f"<array of {len(v)}>" if k in BIG_ARRAYS and isinstance(v, list) else v)
                for k, v in f.metadata.items()}
        out = {"summary": summary(str(path)), "metadata": meta,
               "tensors": [{"name": t.name, "type": t.type_name, "shape": list(t.shape), "offset": t.offset,
                            "nbytes": t.nbytes} for t in f.tensors]}
        print(json.dumps(out, indent=1))
        return 0
    s = summary(str(path))
    p = s["parameters"]
    print(f"file:          {s['file']} ({s['file_size'] / 2**20:.1f} MiB, GGUF v{s['gguf_version']})")
    print(f"name:          {s['name']}")
    print(f"architecture:  {s['architecture']}")
    print(f"parameters:    {p / 1e6:.1f} M")
    print(f"layers:        {s['layers']}")
    print(f"embedding:     {s['embedding']} (feed-forward {s['feed_forward']})")
    print(f"heads:         {s['heads']} (kv heads {s['kv_heads']})")
    print(f"context:       {s['context_length']}")
    print(f"vocab:         {s['vocab_size']} ({s['tokenizer']}/{s['tokenizer_pre']})")
    print("quant types:   " + ", ".join(f"{k}×{v}" for k, v in s["quant_types"].items()))
    print(f"chat template: {'yes' if s['chat_template'] else 'no'}")
    return 0
