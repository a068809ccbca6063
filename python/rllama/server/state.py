"""The per-app objects every route reaches through `state()`: settings, model, backend, keys."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quart import current_app, request

from rllama.server.backend import Backend
from rllama.server.errors import ApiError, unavailable
from rllama.server.validate import parse_json


@dataclass
class State:
    settings: Any
    model: Any = None
    backend: Backend | None = None
    load_error: str | None = None
    api_keys: list[str] = field(default_factory=list)
    static_dirs: list[Path] = field(default_factory=list)  # --path DIR first, then the built-in UI
    started: float = field(default_factory=time.time)
    shutting_down: bool = False
    system_prompt: dict[str, str] = field(default_factory=dict)

    def set_model(self, model: Any) -> None:
        self.model = model
        self.backend = Backend(model)

    @property
    def ready(self) -> bool:
        return self.backend is not None


def state() -> State:
    return current_app.config["RLLAMA_STATE"]


def ready_state() -> State:
    """The state, once the model is loaded (503 "Loading model" before)."""
    st = state()
    if st.load_error is not None:
        raise ApiError(f"the model failed to load: {st.load_error}", "server_error")
    if not st.ready:
        raise unavailable("Loading model")
    return st


async def body_json(allow_empty: bool = False) -> dict[str, Any]:
    data = await request.get_data(cache=True, as_text=False)
    return parse_json(data, allow_empty=allow_empty)
