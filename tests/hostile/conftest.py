"""The hostile suite runs its selected cases in parallel child processes (see test_hostile.py)."""

from __future__ import annotations


def pytest_collection_modifyitems(session, config, items):
    config._hostile_selected = [item.callspec.params["name"] for item in items
                                if item.originalname == "test_hostile" and hasattr(item, "callspec")]
