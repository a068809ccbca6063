"""GET /slots and POST /slots/{id}?action=save|restore|erase (slot files under --slot-save-path)."""

from __future__ import annotations

import os
from pathlib import Path

from quart import Blueprint, jsonify, request

from rllama.server.errors import invalid, not_found, not_supported
from rllama.server.state import State, body_json, ready_state

bp = Blueprint("slots", __name__)


def require_slots_endpoint(st: State) -> None:
    if st.settings.slots_endpoint_disable:
        raise not_supported("This server does not support slots endpoint.")


@bp.get("/slots")
async def slots():
    st = ready_state()
    require_slots_endpoint(st)
    return jsonify(st.backend.slots())


def slot_file(st: State, filename: object) -> Path:
    """`filename` inside --slot-save-path: a plain name, no separators, no `..`, no way out."""
    if not isinstance(filename, str) or not filename:
        raise invalid('"filename" is required and must be a string')
    bad = ("/" in filename or "\\" in filename or filename in (".", "..") or ".." in filename
           or "\x00" in filename or filename.startswith(".") or len(filename) > 255
           or any(ord(c) < 32 for c in filename))
    if bad:
        raise invalid(f"Invalid filename: {filename!r} (a plain file name: no path separators, no '..')")
    root = Path(st.settings.slot_save_path).resolve()
    path = (root / filename).resolve()
    if path.parent != root:
        raise invalid(f"Invalid filename: {filename!r}")
    return path


@bp.post("/slots/<id_slot>")
async def slot_action(id_slot: str):
    st = ready_state()
    action = request.args.get("action", "")
    if action not in ("save", "restore", "erase"):
        raise invalid(f"Invalid action {action!r}: one of save, restore, erase")
    if not st.settings.slot_save_path:
        raise not_supported("This server does not support slot save/restore: start it with --slot-save-path")
    try:
        slot = int(id_slot)
    except ValueError:
        raise invalid(f"Invalid slot id {id_slot!r}") from None
    if not 0 <= slot < st.backend.n_parallel:
        raise not_found(f"Invalid slot id {slot}: the server has {st.backend.n_parallel} slot(s)")
    model = st.model
    body = await body_json(allow_empty=True)
    path = slot_file(st, body.get("filename")) if action != "erase" else None
    method = {"save": "slot_save", "restore": "slot_restore", "erase": "slot_erase"}[action]
    if not hasattr(model, method):
        raise not_supported(f"slot {action} is not supported by this engine yet")
    if action == "erase":
        res = await st.backend.call(model.slot_erase, slot)
        return jsonify({"id_slot": slot, "n_erased": res["n_erased"]})
    assert path is not None
    if action == "save":
        os.makedirs(path.parent, exist_ok=True)
        res = await st.backend.call(model.slot_save, slot, str(path))
        return jsonify({"id_slot": slot, "filename": path.name, "n_saved": res["n_saved"],
                        "n_written": res["n_written"], "timings": {"save_ms": res["save_ms"]}})
    if not path.is_file():
        raise invalid(f"Failed to restore slot: file {path.name!r} not found")
    res = await st.backend.call(model.slot_restore, slot, str(path))
    return jsonify({"id_slot": slot, "filename": path.name, "n_restored": res["n_restored"],
                    "n_read": res["n_read"], "timings": {"restore_ms": res["restore_ms"]}})



