"""Every task state (models.TaskState, the one list) has its colour, legend entry and filter."""

from __future__ import annotations

import re

from fastapi.testclient import TestClient

from dirt.cli.base import STATE_STYLES
from dirt.models import TaskState
from dirt.web.render import STATE_ORDER, STATIC
from tests.web.conftest import BROWSER


def test_the_legend_and_the_filter_name_every_state(client: TestClient) -> None:
    page = client.get("/", headers=BROWSER).text
    legend = re.search(r'<p class="legend">(.*?)</p>', page, re.DOTALL)
    assert legend is not None
    assert re.findall(r'class="s-(\w+)"', legend.group(1)) == list(STATE_ORDER)
    options = re.findall(r'<option value="(\w+)"', page)
    assert options == [s.value for s in TaskState]


def test_the_bar_keeps_the_originals_order_and_misses_no_state() -> None:
    assert STATE_ORDER[:4] == ("succeeded", "failed", "running", "waiting")
    assert sorted(STATE_ORDER) == sorted(s.value for s in TaskState)


def test_every_state_has_a_colour_on_the_page_and_in_the_terminal() -> None:
    css = (STATIC / "dirt.css").read_text()
    for state in TaskState:
        assert re.search(rf"(?m)^\.s-{state.value} \{{ fill: var\(--{state.value}\)", css), state
        assert f"span.state.s-{state.value} {{ background" in css, state
        assert state in STATE_STYLES, state
