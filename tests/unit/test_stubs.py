"""The native module's type stubs list exactly what the module has (names and class members)."""

import ast
import inspect
from pathlib import Path

import rllama._core as core

STUB = Path(__file__).resolve().parents[2] / "python" / "rllama" / "_core.pyi"


def stub_names():
    tree = ast.parse(STUB.read_text())
    top, members = set(), {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            top.add(node.name)
            members[node.name] = {n.name for n in node.body if isinstance(n, ast.FunctionDef)} - {"__init__"}
        elif isinstance(node, ast.FunctionDef):
            top.add(node.name)
        elif isinstance(node, ast.AnnAssign):
            top.add(node.target.id)
    return top, members


def test_stub_names_match_module():
    top, members = stub_names()
    module = {n for n in dir(core) if not n.startswith("__")} | {"__version__"}
    assert top == module
    for name, stubbed in members.items():
        cls = getattr(core, name)
        if issubclass(cls, BaseException):
            continue
        real = {m for m in vars(cls) if not m.startswith("_") or m in ("__iter__", "__next__", "__len__")}
        assert stubbed == real, name


def test_stub_signatures_match_module():
    tree = ast.parse(STUB.read_text())
    for node in tree.body:
        if not isinstance(node, ast.ClassDef) or issubclass(getattr(core, node.name), BaseException):
            continue
        cls = getattr(core, node.name)
        for fn in (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name != "__init__"):
            try:
                sig = inspect.signature(getattr(cls, fn.name))
            except (TypeError, ValueError):
                continue
            real = [p for p in sig.parameters if p not in ("self", "$self")]
            stub = [a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs if a.arg != "self"]
            assert stub == real, f"{node.name}.{fn.name}: {stub} != {real}"
