"""Shared fixtures: the real models (fetched through rllama.models) and the golden data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def golden_dir() -> Path:
    env = os.environ.get("RLLAMA_GOLDEN")
    candidates = [Path(env)] if env else []
    candidates.append(ROOT.parent / "shared" / "golden")
    for c in candidates:
        if (c / "README.md").exists():
            return c
    raise FileNotFoundError("golden data not found: set RLLAMA_GOLDEN or place shared/ beside the repo")


@pytest.fixture(scope="session")
def golden():
    """golden('generate_smollm2.json') -> parsed JSON."""
    d = golden_dir()

    def load(name: str):
        return json.loads((d / name).read_text())

    load.dir = d
    return load


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    import rllama.models

    return rllama.models.resolve("smollm2")


@pytest.fixture(scope="session")
def gemma3_path() -> Path:
    import rllama.models

    return rllama.models.resolve("gemma3")
