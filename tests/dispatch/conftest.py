"""Fixtures of the dispatch tests."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["process", "thread"])
def isolation(request: pytest.FixtureRequest, settings_overrides: dict) -> str:
    """Each test that takes it runs once per isolation: a process per task, or threads."""
    settings_overrides["dispatch"]["isolation"] = request.param
    return str(request.param)
