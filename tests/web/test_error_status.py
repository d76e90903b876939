"""An error's HTTP status says whose it is: the request's (4xx), the server's or a node's (5xx)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from dirt.errors import (
    ConfigError,
    DirtError,
    InputError,
    NodeError,
    NotFoundError,
    StateError,
    SubmissionError,
)
from dirt.web.app import _status_of


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (SubmissionError(["x"]), 422),
        (InputError("bad cursor"), 400),
        (NotFoundError("no task 'x'"), 404),
        (StateError("task x is running"), 409),
        (NodeError("node n1: connection refused"), 502),
        (ConfigError("invalid settings"), 500),
        (DirtError("anything else"), 400),
    ],
)
def test_each_error_answers_with_its_own_status(error: DirtError, status: int) -> None:
    assert _status_of(error) == status


def test_a_page_action_that_does_not_exist_is_not_found(client: TestClient) -> None:
    answer = client.post("/tasks/2e3dabbff38ca7f6fa05c5a0cbbc95a4/frobnicate")
    assert answer.status_code == 404


def test_a_bad_cursor_on_a_page_is_shown_not_rejected(client: TestClient) -> None:
    page = client.get("/", params={"before": "not-a-cursor"}, headers={"accept": "text/html"})
    assert page.status_code == 200 and "not a page cursor" in page.text
