"""`python -m rllama bench serve`: C concurrent streaming generations in-process through the
engine (the library's front door, no HTTP), for C in -c; prints aggregate generated tokens/s,
time to first token and latency percentiles, and the process's peak RSS, as JSON lines."""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import threading
import time


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))] if xs else 0.0


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m rllama bench serve")
    ap.add_argument("-m", "--model", default="smollm2")
    ap.add_argument("-c", "--concurrency", default="1,4,8,16")
    ap.add_argument("-n", "--n-predict", type=int, default=128)
    ap.add_argument("--requests", type=int, default=0, help="requests per level (default 2 x concurrency, >= 4)")
    ap.add_argument("-np", "--parallel", type=int, default=0, help="slots (default: the largest concurrency)")
    ap.add_argument("--ctx-size", "-ctx", type=int, default=0, help="total context (default 1024 per slot)")
    ap.add_argument("-t", "--threads", type=int, default=None)
    ap.add_argument("--temp", type=float, default=0.8)
    ap.add_argument("--shared-prefix", type=int, default=0,
                    help="prefix every prompt with about this many tokens of a common system prompt")
    ap.add_argument("--deterministic", action="store_true",
                    help="batch-invariant sums (the server's --deterministic)")
    args = ap.parse_args(argv)
    try:
        levels = [int(x) for x in args.concurrency.split(",") if x]
        if not levels or min(levels) < 1:
            raise ValueError
    except ValueError:
        ap.error("-c takes positive integers separated by commas")
    from rllama import Model
    from rllama._core import simd as simd_level

    n_par = args.parallel or max(levels)
    n_ctx = args.ctx_size or n_par * max(1024, args.n_predict + args.shared_prefix + 128)
    m = Model(args.model, n_ctx=n_ctx, n_parallel=n_par, n_threads=args.threads, deterministic=args.deterministic)
    system = ("You are a helpful assistant. " * (args.shared_prefix // 6 + 1)) if args.shared_prefix else ""
    where = {"cpu": cpu_model(), "simd": simd_level(), "threads": m.n_threads, "n_parallel": n_par,
             "deterministic": args.deterministic}

    def emit(metric: str, value: float, unit: str, c: int) -> None:
        print(json.dumps({"bench": "serve", "metric": metric, "value": round(value, 3), "unit": unit,
                          "concurrency": c, **where}), flush=True)

    m.complete("warm up", n_predict=4)
    for c in levels:
        n_req = args.requests or max(4, 2 * c)
        ttft: list[float] = []
        lat: list[float] = []
        cached: list[int] = []
        counter = iter(range(n_req))
        lock = threading.Lock()
        n_tok = 0

        def client(counter=counter, lock=lock, ttft=ttft, lat=lat, cached=cached) -> None:
            nonlocal n_tok
            while True:
                with lock:
                    k = next(counter, None)
                if k is None:
                    return
                t0 = time.perf_counter()
                first = None
                final = {}
                for chunk in m.complete(f"{system}Request {k}: tell me a story about the number {k}.",
                                        n_predict=args.n_predict, temperature=args.temp, seed=k,
                                        ignore_eos=True, stream=True):
                    if first is None:
                        first = time.perf_counter()
                    final = chunk
                t1 = time.perf_counter()
                with lock:
                    ttft.append(((first or t1) - t0) * 1e3)
                    lat.append((t1 - t0) * 1e3)
                    n_tok += final.get("tokens_predicted", 0)
                    cached.append(final.get("tokens_evaluated", 0) - final.get("timings", {}).get("prompt_n", 0))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(c)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        wall = time.perf_counter() - t0
        emit("aggregate_gen_tokens_per_s", n_tok / wall, "tok/s", c)
        emit("ttft_p50", statistics.median(ttft), "ms", c)
        emit("ttft_p95", _pct(ttft, 0.95), "ms", c)
        emit("latency_p50", statistics.median(lat), "ms", c)
        emit("latency_p95", _pct(lat, 0.95), "ms", c)
        if args.shared_prefix:
            emit("prompt_tokens_from_cache_mean", statistics.mean(cached), "tokens", c)
    emit("peak_rss", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "MB", 0)
    m.close()
    return 0
