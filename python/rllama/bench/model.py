"""`python -m rllama bench -m MODEL -p 64,512 -n 128 -t 1,2 -r 3 [--json]`: llama-bench-like
prompt processing (ppN) and generation (tgN) throughput, then the peak resident memory of a fresh
process that loads the model with a `--rss-ctx` context and generates (0 skips it). Every figure says the CPU model and SIMD level it
came from; the load time is the seconds `Model(...)` took (repacking the weights included)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

import numpy as np

from rllama.model_args import Parser, int_in, int_list
from rllama.validate import N_CTX_MAX, N_THREADS_MAX


def main(argv: list[str]) -> int:
    ap = Parser(prog="python -m rllama bench", description=__doc__)
    ap.add_argument("-m", "--model", default="smollm2")
    ap.add_argument("-p", "--n-prompt", type=int_list(0, N_CTX_MAX), default=[512])
    ap.add_argument("-n", "--n-gen", type=int_list(0, N_CTX_MAX), default=[128])
    ap.add_argument("-t", "--threads", type=int_list(1, N_THREADS_MAX), default=[2])
    ap.add_argument("-b", "--batch-size", type=int_in(1, N_CTX_MAX), default=512)
    ap.add_argument("-r", "--repetitions", type=int_in(1, 10_000), default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--rss-ctx", type=int_in(0, N_CTX_MAX), default=2048,
                    help="context of the peak-RSS run (0: skip it)")
    args = ap.parse_args(argv)

    from rllama import Model
    from rllama._core import simd
    from rllama.bench.serve import cpu_model
    from rllama.gguf import GgufReader
    from rllama.models import resolve

    path = resolve(args.model)
    info = GgufReader(path)
    size = sum(t.nbytes for t in info.tensors)
    n_params = sum(t.n_elements for t in info.tensors)
    arch = info.get("general.architecture", "?")
    name = f"{arch} {info.get('general.size_label', '')}".strip()
    rng = np.random.default_rng(0)
    rows = []
    where = {"cpu": cpu_model(), "simd": simd()}
    if not args.json:
        print(f"cpu: {where['cpu']}, simd: {where['simd']}")
        print(f"| {'model':<16} | {'size':>10} | {'params':>8} | {'threads':>7} | {'test':>6} | {'t/s':>18} |")
        print(f"| {'-' * 16} | {'-' * 10}: | {'-' * 8}: | {'-' * 7}: | {'-' * 6}: | {'-' * 18}: |")
    for nt in args.threads:
        # The engine's own slots are not used: pp and tg run as engine jobs in scratch caches.
        model = None  # the previous thread count's model goes first (its memory too)
        t0 = time.perf_counter()
        model = Model(str(path), n_threads=nt, n_ctx=256, n_batch=args.batch_size, n_ubatch=args.batch_size)
        load_s = time.perf_counter() - t0
        vocab = model.n_vocab
        tests = [("pp", n) for n in args.n_prompt if n > 0] + [("tg", n) for n in args.n_gen if n > 0]
        for kind, n in tests:
            speeds = []
            for _ in range(args.repetitions + 1):  # first run warms up
                toks = rng.integers(100, vocab - 100, size=n).tolist()
                t0 = time.perf_counter()
                if kind == "pp":
                    model.logits(toks)
                else:
                    model.decode_bench(toks)
                speeds.append(n / (time.perf_counter() - t0))
            speeds = speeds[1:]
            avg, sd = statistics.mean(speeds), (statistics.stdev(speeds) if len(speeds) > 1 else 0.0)
            row = {"model_filename": str(path), "model_type": name, "model_size": size, "model_n_params": n_params,
                   "n_threads": nt, "n_batch": args.batch_size, "n_prompt": n if kind == "pp" else 0,
                   "n_gen": n if kind == "tg" else 0, "test": f"{kind}{n}", "avg_ts": avg, "stddev_ts": sd,
                   "samples_ts": speeds, "load_s": load_s, **where}
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(f"| {name:<16} | {size / 2**20:>6.2f} MiB | {n_params / 1e6:>6.1f} M | {nt:>7} | "
                      f"{kind}{n:>4} | {avg:>10.2f} ± {sd:>5.2f} |", flush=True)
    if args.rss_ctx > 0:
        n_gen = max(args.n_gen + [16])
        rss = peak_rss(str(path), args.rss_ctx, max(args.threads), n_gen)
        row = {"model_filename": str(path), "test": "peak_rss", "n_ctx": args.rss_ctx, "n_gen": n_gen,
               "peak_rss_bytes": rss, **where}
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(f"peak RSS loading at -c {args.rss_ctx} and generating {n_gen} tokens: {rss / 1e6:.0f} MB")
    if not args.json:
        print(f"load: {load_s:.2f} s (at -t {args.threads[-1]})")
    return 0


# The child's own high-water mark: VmHWM where Linux has it (ru_maxrss would also count the
# parent's memory, which `exec` carries over into it when the child was spawned by vfork).
_RSS_CODE = """
import resource, sys
import rllama
m = rllama.Model(sys.argv[1], n_ctx=int(sys.argv[2]), n_threads=int(sys.argv[3]))
m.complete("Once upon a time", n_predict=int(sys.argv[4]), temperature=0, ignore_eos=True)
try:
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
    print(int(hwm[0].split()[1]) * 1024)
except (OSError, IndexError):
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""


def peak_rss(path: str, n_ctx: int, threads: int, n_gen: int) -> int:
    """Peak resident bytes of a fresh Python process that loads the model and generates."""
    r = subprocess.run([sys.executable, "-c", _RSS_CODE, path, str(n_ctx), str(threads), str(n_gen)],
                       capture_output=True, text=True, check=True)
    return int(r.stdout.split()[-1])
