"""The Quart application: `create_app(settings, model)`.

`model` may be None while it loads (every route but /health answers 503 "Loading model" until
`app.config["RLLAMA_STATE"].set_model(model)`). The app adds, around the routes: API-key auth
(Bearer, constant-time, /health and the static UI exempt), CORS as llama.cpp sends it, static
files (--path, else the built-in web UI), and one error shape for everything that goes wrong.
"""

from __future__ import annotations

import hmac
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

from quart import Quart, Response, request, send_file
from werkzeug.exceptions import HTTPException
from werkzeug.security import safe_join

from rllama.server.errors import AUTHENTICATION, ApiError, from_exception, not_found
from rllama.server.state import State

log = logging.getLogger("rllama.server")

PUBLIC_PATHS = {"/health", "/v1/health"}
MAX_BODY = 64 * 1024 * 1024


def builtin_web_dir() -> Path | None:
    """The web UI shipped in the wheel (rllama/web), else the repository's web/."""
    try:
        d = resources.files("rllama") / "web"
        if d.is_dir():
            return Path(str(d))
    except (ModuleNotFoundError, TypeError, FileNotFoundError):
        pass
    repo = Path(__file__).resolve().parents[3] / "web"
    return repo if repo.is_dir() else None


def load_api_keys(settings: Any) -> list[str]:
    keys = [k for k in (settings.api_key or []) if k]
    if settings.api_key_file:
        with open(settings.api_key_file, encoding="utf-8") as f:
            keys += [line.strip() for line in f if line.strip()]
    return keys


def key_ok(given: str, keys: list[str]) -> bool:
    # Compare against every key so the time taken says nothing about which one nearly matched.
    ok = False
    g = given.encode("utf-8", "surrogateescape")
    for k in keys:
        ok |= hmac.compare_digest(g, k.encode("utf-8"))
    return ok


def static_file(st: State, path: str) -> Path | None:
    """The file a GET for `path` names: in --path DIR, else in the built-in UI (llama.cpp serves its
    own completion.js beside the --path files), or None. Nothing escapes either dir."""
    for root in st.static_dirs:
        f = _file_in(root, path)
        if f is not None:
            return f
    return None


def _file_in(root: Path, path: str) -> Path | None:
    rel = path.lstrip("/") or "index.html"
    joined = safe_join(str(root), rel)
    if joined is None:
        return None
    p = Path(joined)
    if p.is_dir():
        p = p / "index.html"
    try:
        real = p.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not real.is_file() or not real.is_relative_to(root.resolve()):
        return None
    return real


def create_app(settings: Any, model: Any = None) -> Quart:
    app = Quart("rllama.server", static_folder=None)
    st = State(settings=settings, api_keys=load_api_keys(settings))
    spf = getattr(settings, "system_prompt_file", None)
    if spf:
        from rllama.serve_cli import load_system_prompt

        st.system_prompt = load_system_prompt(spf)
    builtin = builtin_web_dir()
    st.static_dirs = [d.resolve() for d in (Path(settings.path) if settings.path else None, builtin) if d is not None]
    if model is not None:
        st.set_model(model)
    app.config.update(
        RLLAMA_STATE=st,
        MAX_CONTENT_LENGTH=MAX_BODY,
        BODY_TIMEOUT=settings.timeout,
        RESPONSE_TIMEOUT=None,
        JSON_SORT_KEYS=False,
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    app.json.sort_keys = False
    app.json.ensure_ascii = False

    from rllama.server.routes import monitor, native, openai, slots

    for bp in (monitor.bp, native.bp, openai.bp, slots.bp):
        app.register_blueprint(bp)

    def error_response(err: ApiError) -> Response:
        return Response(err.json(), status=err.code, mimetype="application/json")

    @app.before_request
    async def before() -> Response | None:
        request.environ_started = time.perf_counter()  # type: ignore[attr-defined]
        if request.method == "OPTIONS":
            return cors_preflight()
        if st.shutting_down and request.path not in PUBLIC_PATHS:
            return error_response(ApiError("the server is shutting down", "unavailable_error"))
        if not st.api_keys or request.path in PUBLIC_PATHS:
            return None
        if request.method in ("GET", "HEAD") and (request.path == "/" or static_file(st, request.path)):
            return None  # the static UI is public
        auth = request.headers.get("Authorization", "")
        given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("X-Api-Key", "")
        if given and key_ok(given, st.api_keys):
            return None
        return error_response(ApiError("Invalid API Key", AUTHENTICATION))

    def cors_preflight() -> Response:
        resp = Response("", status=200)
        resp.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        resp.headers["Access-Control-Allow-Headers"] = request.headers.get(
            "Access-Control-Request-Headers", "*") or "*"
        resp.headers["Access-Control-Max-Age"] = "600"
        return resp

    @app.after_request
    async def after(resp: Response) -> Response:
        origin = request.headers.get("Origin")
        resp.headers["Access-Control-Allow-Origin"] = origin or "*"
        resp.headers["Access-Control-Allow-Credentials"] = "true"
        if origin:
            resp.headers["Vary"] = "Origin"
        resp.headers.setdefault("Server", "rllama")
        if settings.verbose:
            t0 = getattr(request, "environ_started", None)
            ms = (time.perf_counter() - t0) * 1e3 if t0 else 0.0
            log.info("request", extra={"fields": {"method": request.method, "path": request.path,
                                                  "status": resp.status_code, "ms": round(ms, 2),
                                                  "remote_addr": request.remote_addr}})
        return resp

    @app.get("/openapi.json")
    async def openapi_document():
        from rllama.server.openapi import document

        return document()

    @app.route("/", methods=["GET", "HEAD"])
    async def index():
        f = static_file(st, "/")
        if f is None:
            raise not_found("File Not Found: no web UI here (start with --path DIR to serve one)")
        return await send_file(f)

    @app.route("/<path:subpath>", methods=["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"])
    async def static_or_404(subpath: str):
        if request.method in ("GET", "HEAD"):
            f = static_file(st, subpath)
            if f is not None:
                return await send_file(f)
        raise not_found(f"File Not Found: {request.method} /{subpath}")

    @app.errorhandler(ApiError)
    async def api_error(e: ApiError):
        return error_response(e)

    @app.errorhandler(HTTPException)
    async def http_error(e: HTTPException):
        code = e.code or 500
        kind = {401: "authentication_error", 404: "not_found_error", 501: "not_supported_error",
                503: "unavailable_error"}.get(code, "invalid_request_error" if code < 500 else "server_error")
        msg = {404: "File Not Found", 405: f"Method {request.method} not allowed for {request.path}",
               413: f"the request body is larger than {MAX_BODY} bytes"}.get(code, e.description or e.name)
        return error_response(ApiError(msg, kind, code))

    @app.errorhandler(Exception)
    async def any_error(e: Exception):
        err = from_exception(e)
        if err.code >= 500:
            log.exception("error handling %s %s", request.method, request.path)
        return error_response(err)

    return app
