"""The hostile suite runs its selected cases in parallel child processes (see test_hostile.py)."""

from __future__ import annotations


def pytest_collection_finish(session):
    # After -k/-m deselection: only the cases that will run are started up front.
    session.config._hostile_selected = [item.callspec.params["name"] for item in session.items
                                        if item.originalname == "test_hostile" and hasattr(item, "callspec")]
