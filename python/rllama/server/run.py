"""Run the app under Hypercorn: bind, TLS, timeouts, model loading in the background, signals.

The socket is bound first and /health answers 503 "loading model" until the model is ready
(llama-server's behaviour). SIGINT/SIGTERM stop accepting connections, give in-flight requests
a short grace period, then cancel what is left (a cancelled stream cancels its generation) and
exit 0; a watchdog makes sure the process is gone within seconds even if something is stuck.

--threads-http sizes the executor that runs blocking calls (embeddings, slot files): Hypercorn
serves every connection from one asyncio loop, so HTTP itself needs no thread per connection,
and worker processes would each load the model.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import threading
from typing import Any

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

from rllama.server import logs
from rllama.server.app import create_app

GRACE_SECONDS = 2.0
WATCHDOG_SECONDS = 8.0


def hypercorn_config(s: Any) -> Config:
    c = Config()
    host = f"[{s.host}]" if ":" in s.host and not s.host.startswith("[") else s.host
    c.bind = [f"{host}:{s.port}"]
    if s.ssl_cert_file:
        c.certfile = s.ssl_cert_file
        c.keyfile = s.ssl_key_file
    c.read_timeout = s.timeout if s.timeout > 0 else None
    c.graceful_timeout = GRACE_SECONDS
    c.keep_alive_timeout = 5
    c.accesslog = None
    c.errorlog = "-" if not s.log_disable else None
    c.loglevel = "WARNING"
    return c


def _watchdog() -> None:
    def kill() -> None:
        os._exit(0)

    t = threading.Timer(WATCHDOG_SECONDS, kill)
    t.daemon = True
    t.start()


def serve(s: Any, path: str, model_kwargs: dict[str, Any]) -> int:
    log = logs.setup(s.log_format, s.log_disable, s.verbose)
    app = create_app(s)
    st = app.config["RLLAMA_STATE"]
    exit_code = [0]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if s.threads_http:
            loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=s.threads_http))
        stop = asyncio.Event()

        def on_signal() -> None:
            if not stop.is_set():
                log.info("shutting down", extra={"fields": {}})
                st.shutting_down = True
                stop.set()
                _watchdog()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)

        def load() -> None:
            from rllama.model import Model

            try:
                model = Model(path, **model_kwargs)
            except Exception as e:  # noqa: BLE001 - reported on /health, then the process exits 1
                msg = f"{type(e).__name__}: {e}"
                log.error("failed to load the model", extra={"fields": {"error": msg}})
                st.load_error = msg
                exit_code[0] = 1
                loop.call_soon_threadsafe(on_signal)
                return
            loop.call_soon_threadsafe(st.set_model, model)
            log.info("model loaded", extra={"fields": {"model": path, "n_ctx": model.n_ctx}})

        threading.Thread(target=load, name="rllama-load", daemon=True).start()
        scheme = "https" if s.ssl_cert_file else "http"
        log.info("HTTP server listening", extra={"fields": {"url": f"{scheme}://{s.host}:{s.port}"}})
        await hypercorn_serve(app, hypercorn_config(s), shutdown_trigger=stop.wait)
        model = st.model
        if model is not None and hasattr(model, "close"):
            await asyncio.to_thread(model.close)

    asyncio.run(main())
    return exit_code[0]
