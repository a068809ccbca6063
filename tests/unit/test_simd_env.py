"""RLLAMA_SIMD: a level this CPU has is used quietly; a misspelt one, or one the CPU lacks, is said
once on stderr and the detected level is used (never a silent fallback that a benchmark would
print under the wrong name)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

LEVELS = ["scalar", "avx2", "avxvnni", "avx512", "neon"]
CODE = "from rllama import _core; print(_core.simd()); print(_core.simd())"


def run(value: str | None) -> tuple[str, list[str]]:
    env = {k: v for k, v in os.environ.items() if k != "RLLAMA_SIMD"}
    if value is not None:
        env["RLLAMA_SIMD"] = value
    r = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    first, second = r.stdout.split()
    assert first == second
    return first, [line for line in r.stderr.splitlines() if "RLLAMA_SIMD" in line]


@pytest.fixture(scope="module")
def detected() -> str:
    level, warnings = run(None)
    assert warnings == []
    return level


@pytest.mark.parametrize("value", LEVELS)
def test_named_level(value, detected):
    level, warnings = run(value)
    if level == value:
        assert warnings == []
    else:
        # Not on this CPU: the detected level, said once.
        assert level == detected
        assert warnings == [f"rllama: RLLAMA_SIMD={value} is not available on this CPU; using {detected}"]


@pytest.mark.parametrize("value", ["AVX512", "sse4", "avx-2"])
def test_unknown_name(value, detected):
    level, warnings = run(value)
    assert level == detected
    assert len(warnings) == 1
    assert f'RLLAMA_SIMD="{value}" is not a SIMD level (scalar, avx2, avxvnni, avx512, neon)' in warnings[0]
    assert warnings[0].endswith(f"using {detected}")


def test_empty_is_unset(detected):
    assert run("") == (detected, [])
