"""Hostile input to the library and the CLI: each case runs in its own Python process under a
time limit and an address-space limit, so a crash, an abort, a hang or a runaway allocation fails
that case only. A case either raises the library's exception it names (with a message that says
what is wrong) or completes and checks the result itself. See cases.py for the cases.

    python -m pytest tests/hostile -q
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cases
import pytest

HERE = Path(__file__).resolve().parent
MARK = "HOSTILE-RESULT "


def _limits(mem_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _params():
    out = []
    for name, c in cases.CASES.items():
        marks = [pytest.mark.xfail(reason=c.needs, strict=False)] if c.needs else []
        out.append(pytest.param(name, id=f"{c.cls}-{name}", marks=marks))
    return out


def run_case(name: str) -> tuple[str, dict | None]:
    """Run one case in a child process: (failure text or "", its result)."""
    c = cases.CASES[name]
    env = dict(os.environ, PYTHONFAULTHANDLER="1", RAYON_NUM_THREADS="2", PYTHONDONTWRITEBYTECODE="1")
    try:
        r = subprocess.run([sys.executable, str(HERE / "_child.py"), name], capture_output=True, text=True,
                           check=False, timeout=c.timeout, preexec_fn=_limits(c.mem_gb << 30), env=env,
                           cwd=str(HERE))
    except subprocess.TimeoutExpired:
        return f"{name}: hung (no result within {c.timeout} s)", None
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(MARK)]
    if r.returncode != 0 or not lines:
        return f"{name}: the process died (exit status {r.returncode}); stderr tail:\n{r.stderr[-3000:]}", None
    return "", json.loads(lines[-1][len(MARK):])


@pytest.fixture(scope="session")
def results(request):
    """Every selected case, run up front a few processes at a time (each still alone in its own
    process under its own limits): the suite is dominated by process start-up."""
    names = getattr(request.config, "_hostile_selected", None) or list(cases.CASES)
    workers = max(2, min(8, (os.cpu_count() or 2) + 1))
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(names, pool.map(run_case, names)))


@pytest.mark.parametrize("name", _params())
def test_hostile(name, results):
    c = cases.CASES[name]
    failure, res = results[name] if name in results else run_case(name)
    if failure:
        pytest.fail(failure)
    if c.expect == "ok":
        assert res["outcome"] == "ok", f"{name}: raised {res['types'][0]}: {res['message']}\n{res['traceback']}"
        return
    assert res["outcome"] == "raised", f"{name}: expected {c.expect}, but it completed"
    assert c.expect in res["types"], (
        f"{name}: expected {c.expect}, got {res['types'][0]}: {res['message']}\n{res.get('traceback', '')}")
    if c.match:
        assert re.search(c.match, res["message"], re.IGNORECASE | re.DOTALL), (
            f"{name}: message {res['message']!r} !~ {c.match!r}")


def test_every_class_has_cases():
    assert set(cases.CLASSES) == {c.cls for c in cases.CASES.values()}
