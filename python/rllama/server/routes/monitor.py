"""GET /health and GET /metrics."""

from __future__ import annotations

from quart import Blueprint, Response, jsonify, request

from rllama.server import metrics as prom
from rllama.server.errors import not_supported
from rllama.server.state import ready_state, state

bp = Blueprint("monitor", __name__)


@bp.get("/health")
@bp.get("/v1/health")
async def health():
    st = state()
    if st.load_error is not None:
        return jsonify({"status": "error", "error": st.load_error}), 500
    if not st.ready:
        return jsonify({"status": "loading model"}), 503
    total = st.backend.n_parallel
    busy = min(st.backend.processing(), total)
    body = {"status": "ok", "slots_idle": total - busy, "slots_processing": busy}
    code = 200
    if busy >= total:
        body["status"] = "no slot available"
        if "fail_on_no_slot" in request.args:
            code = 503
    if "include_slots" in request.args and not st.settings.slots_endpoint_disable:
        body["slots"] = st.backend.slots()
    return jsonify(body), code


@bp.get("/metrics")
async def metrics():
    st = ready_state()
    if not st.settings.metrics:
        raise not_supported("This server does not support metrics endpoint.")
    return Response(prom.render(st.backend.metrics), mimetype="text/plain; version=0.0.4")
