"""`python -m rllama serve`: llama-server's command line, parsed into `ServerSettings`.

Every flag of llama.cpp's server is accepted with the same spelling and default. A flag whose
feature rllama does not have yet is refused with one line and a non-zero exit, never ignored.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field, fields

from rllama.errors import RllamaError
from rllama.model_args import FLASH_ATTN, KV_TYPES


class NotSupportedYet(RllamaError):
    pass


@dataclass
class ServerSettings:
    verbose: bool = False
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    threads_batch: int | None = None  # default: threads
    threads_http: int | None = None
    model: str | None = None
    model_url: str | None = None
    hf_repo: str | None = None
    hf_file: str | None = None
    alias: str | None = None
    ctx_size: int = 512
    n_gpu_layers: int = 0
    main_gpu: int = 0
    tensor_split: str | None = None
    batch_size: int = 2048
    ubatch_size: int = 512
    mlock: bool = False
    no_mmap: bool = False
    numa: str | None = None
    lora: list[str] = field(default_factory=list)
    lora_base: str | None = None
    timeout: int = 600
    host: str = "127.0.0.1"
    port: int = 8080
    path: str | None = None
    api_key: list[str] = field(default_factory=list)
    api_key_file: str | None = None
    embeddings: bool = False
    parallel: int = 1
    kv_unified: bool = False
    context_shift: bool = True
    slot_prompt_similarity: float = 0.5
    cont_batching: bool = False
    system_prompt_file: str | None = None
    n_probs_max: int = 100
    deterministic: bool = False
    mmproj: str | None = None
    grp_attn_n: int = 1
    grp_attn_w: int = 512
    n_predict: int = -1
    slots_endpoint_disable: bool = False
    metrics: bool = False
    slot_save_path: str | None = None
    chat_template: str | None = None
    log_disable: bool = False
    log_format: str = "json"
    rope_scaling: str | None = None
    rope_freq_base: float | None = None
    rope_freq_scale: float | None = None
    yarn_ext_factor: float = 1.0
    yarn_attn_factor: float = 1.0
    yarn_beta_slow: float = 1.0
    yarn_beta_fast: float = 32.0
    pooling: str | None = None
    defrag_thold: float = -1.0
    flash_attn: str = "auto"
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    spm_infill: bool = False
    ssl_key_file: str | None = None
    ssl_cert_file: str | None = None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like argparse but without usage spam
        print(f"rllama serve: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    d = ServerSettings()
    p = _Parser(prog="python -m rllama serve", description="Serve a GGUF model over HTTP (llama-server flags).")
    a = p.add_argument
    a("-v", "--verbose", action="store_true")
    a("-t", "--threads", type=int, default=d.threads)
    a("-tb", "--threads-batch", type=int, default=None)
    a("--threads-http", type=int, default=None)
    a("-m", "--model", default=None)
    a("-mu", "--model-url", default=None)
    a("-hfr", "--hf-repo", default=None)
    a("-hff", "--hf-file", default=None)
    a("-a", "--alias", default=None)
    a("-c", "--ctx-size", type=int, default=d.ctx_size)
    a("-ngl", "--n-gpu-layers", "--gpu-layers", type=int, default=d.n_gpu_layers)
    a("-mg", "--main-gpu", type=int, default=d.main_gpu)
    a("-ts", "--tensor-split", default=None)
    a("-b", "--batch-size", type=int, default=d.batch_size)
    a("-ub", "--ubatch-size", type=int, default=d.ubatch_size)
    a("--mlock", action="store_true")
    a("--no-mmap", action="store_true")
    a("--numa", nargs="?", const="distribute", default=None, choices=["distribute", "isolate", "numactl"])
    a("--lora", action="append", default=[])
    a("--lora-base", default=None)
    a("-to", "--timeout", type=int, default=d.timeout)
    a("--host", default=d.host)
    a("--port", type=int, default=d.port)
    a("--path", default=None)
    a("--api-key", action="append", default=[])
    a("--api-key-file", default=None)
    a("--embeddings", "--embedding", action="store_true")
    a("-np", "--parallel", type=int, default=d.parallel)
    a("-kvu", "--kv-unified", action="store_true", help="every slot may use the whole context")
    a("--context-shift", dest="context_shift", action="store_true", default=True)
    a("--no-context-shift", dest="context_shift", action="store_false",
      help="stop a generation that fills its slot's context instead of shifting it")
    a("-sps", "--slot-prompt-similarity", type=float, default=d.slot_prompt_similarity)
    a("-cb", "--cont-batching", action="store_true")
    a("-spf", "--system-prompt-file", default=None,
      help="JSON file with prompt, anti_prompt, assistant_name: a prompt prefix shared by every slot")
    a("--deterministic", action="store_true",
      help="every token summed in one order whatever shares its batch: the same bits at any concurrency")
    a("--n-probs-max", type=int, default=d.n_probs_max,
      help="largest n_probs a request may ask for (more is clamped); bounds the memory per token")
    a("--mmproj", default=None)
    a("--grp-attn-n", type=int, default=d.grp_attn_n)
    a("--grp-attn-w", type=int, default=d.grp_attn_w)
    a("-n", "--n-predict", type=int, default=d.n_predict)
    a("--slots-endpoint-disable", action="store_true")
    a("--metrics", action="store_true")
    a("--slot-save-path", default=None)
    a("--chat-template", default=None)
    a("--log-disable", action="store_true")
    a("--log-format", default=d.log_format, choices=["json", "text"])
    a("--rope-scaling", default=None, choices=["none", "linear", "yarn"])
    a("--rope-freq-base", type=float, default=None)
    a("--rope-freq-scale", type=float, default=None)
    a("--yarn-ext-factor", type=float, default=d.yarn_ext_factor)
    a("--yarn-attn-factor", type=float, default=d.yarn_attn_factor)
    a("--yarn-beta-slow", type=float, default=d.yarn_beta_slow)
    a("--yarn-beta-fast", type=float, default=d.yarn_beta_fast)
    a("--pooling", default=None, choices=["none", "mean", "cls", "last"])
    a("-dt", "--defrag-thold", type=float, default=d.defrag_thold)
    a("-fa", "--flash-attn", nargs="?", const="on", default=d.flash_attn, choices=FLASH_ATTN)
    a("-ctk", "--cache-type-k", default=d.cache_type_k, choices=KV_TYPES)
    a("-ctv", "--cache-type-v", default=d.cache_type_v, choices=KV_TYPES)
    a("--spm-infill", action="store_true")
    a("--ssl-key-file", default=None)
    a("--ssl-cert-file", default=None)
    return p


def parse(argv: list[str]) -> ServerSettings:
    ns = build_parser().parse_args(argv)
    names = {f.name for f in fields(ServerSettings)}
    return ServerSettings(**{k: v for k, v in vars(ns).items() if k in names})


def unsupported(s: ServerSettings) -> list[str]:
    """The flags given whose features rllama does not have yet."""
    d = ServerSettings()
    checks = [
        (s.n_gpu_layers > 0, "-ngl/--n-gpu-layers (GPU offload)"),
        (s.main_gpu != d.main_gpu, "-mg/--main-gpu"),
        (s.tensor_split is not None, "-ts/--tensor-split"),
        (s.numa is not None, "--numa"),
        (bool(s.lora), "--lora"),
        (s.lora_base is not None, "--lora-base"),
        (s.mmproj is not None, "--mmproj (multimodal)"),
    ]
    return [name for bad, name in checks if bad]


def check(s: ServerSettings) -> str | None:
    """A one-line reason the flags cannot work together, or None."""
    if (s.ssl_key_file is None) != (s.ssl_cert_file is None):
        return "--ssl-key-file and --ssl-cert-file must be given together"
    for f in (s.ssl_key_file, s.ssl_cert_file, s.api_key_file):
        if f is not None and not os.path.isfile(f):
            return f"no such file: {f}"
    if s.path is not None and not os.path.isdir(s.path):
        return f"--path {s.path}: not a directory"
    if s.parallel < 1:
        return "-np/--parallel must be at least 1"
    if s.grp_attn_n < 1:
        return f"--grp-attn-n {s.grp_attn_n}: the group factor must be at least 1"
    if s.grp_attn_n > 1 and (s.grp_attn_w < s.grp_attn_n or s.grp_attn_w % s.grp_attn_n):
        return f"--grp-attn-w {s.grp_attn_w}: must be a positive multiple of --grp-attn-n ({s.grp_attn_n})"
    if s.port < 0 or s.port > 65535:
        return f"--port {s.port}: out of range"
    if s.threads_http is not None and s.threads_http < 1:
        return "--threads-http must be at least 1"
    if s.timeout < 1:
        return "-to/--timeout must be at least 1 second"
    if not 0 <= s.n_probs_max <= 1 << 20:
        return "--n-probs-max must be between 0 and 1048576"
    if s.system_prompt_file is not None:
        try:
            load_system_prompt(s.system_prompt_file)
        except ValueError as e:
            return str(e)
    return None


def load_system_prompt(path: str) -> dict[str, str]:
    """The -spf file: a JSON object with a string `prompt` and optional `anti_prompt` and
    `assistant_name` (the seed README's `system_prompt` object). ValueError says what is wrong."""
    import json

    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(1 << 24))
    except OSError as e:
        raise ValueError(f"-spf {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"-spf {path}: not valid JSON ({e})") from None
    keys = ("prompt", "anti_prompt", "assistant_name")
    if not isinstance(data, dict) or not isinstance(data.get("prompt"), str) \
            or not all(isinstance(data.get(k, ""), str) for k in keys):
        raise ValueError(f"-spf {path}: expected an object with a string \"prompt\" (and optional string "
                         "\"anti_prompt\", \"assistant_name\")")
    return {k: data.get(k, "") for k in keys}


def resolve_model(s: ServerSettings) -> str:
    from rllama.models import hf_url, resolve

    if s.model_url:
        return str(resolve(s.model_url))
    if s.hf_repo or s.hf_file:
        if not (s.hf_repo and s.hf_file):
            raise RllamaError("-hfr/--hf-repo and -hff/--hf-file must be given together")
        return str(resolve(hf_url(s.hf_repo, s.hf_file)))
    return str(resolve(s.model))


def model_kwargs(s: ServerSettings) -> dict:
    """`rllama.Model` keyword arguments for these flags (only those the installed Model takes)."""
    import inspect

    from rllama.model import Model

    d = ServerSettings()
    kw = {"n_ctx": s.ctx_size, "n_threads": s.threads, "n_threads_batch": s.threads_batch,
          "n_batch": s.batch_size, "n_ubatch": s.ubatch_size, "no_mmap": s.no_mmap, "mlock": s.mlock,
          "chat_template": s.chat_template, "alias": s.alias, "cache_type_k": s.cache_type_k,
          "cache_type_v": s.cache_type_v, "flash_attn": s.flash_attn, "rope_scaling": s.rope_scaling,
          "rope_freq_base": s.rope_freq_base, "rope_freq_scale": s.rope_freq_scale}
    for name in ("yarn_ext_factor", "yarn_attn_factor", "yarn_beta_slow", "yarn_beta_fast"):
        if getattr(s, name) != getattr(d, name):  # the defaults mean "from the model"
            kw[name] = getattr(s, name)
    accepted = inspect.signature(Model.__init__).parameters
    kw.update(n_parallel=s.parallel, kv_unified=s.kv_unified, context_shift=s.context_shift,
              slot_prompt_similarity=s.slot_prompt_similarity, n_probs_max=s.n_probs_max,
              stream_timeout=float(s.timeout), deterministic=s.deterministic, grp_attn_n=s.grp_attn_n,
              grp_attn_w=s.grp_attn_w)
    if "embeddings" in accepted:
        kw["embeddings"] = s.embeddings
    if "pooling" in accepted and s.pooling is not None:
        kw["pooling"] = s.pooling
    return kw


def main(argv: list[str]) -> int:
    s = parse(argv)
    bad = unsupported(s)
    if bad:
        print(f"rllama serve: error: not supported yet: {', '.join(bad)}", file=sys.stderr)
        return 1
    problem = check(s)
    if problem:
        print(f"rllama serve: error: {problem}", file=sys.stderr)
        return 2
    path = resolve_model(s)
    from rllama.gguf import read

    read(path)  # validates the file: a corrupt model is reported here, with its byte offset
    kwargs = model_kwargs(s)
    from rllama.server.run import serve

    return serve(s, path, kwargs)
