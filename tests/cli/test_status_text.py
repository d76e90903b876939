"""`dirt status RECORD` in a terminal shows what tasks said as they said it."""

from __future__ import annotations

from dirt.models import TaskState
from dirt.service import Service
from tests.conftest import run_dirt
from tests.web.conftest import finish_task, run_task, seed_docs

SIMPLE_R123 = "2e3dabbff38ca7f6fa05c5a0cbbc95a4"


def test_brackets_in_a_reason_are_text_not_terminal_markup(service: Service) -> None:
    service.submit(seed_docs())
    service.save_node("n1", {"cpu_count": 1, "hostname": "n1"})
    run_task(service, SIMPLE_R123, "n1")
    finish_task(service, SIMPLE_R123, "n1", TaskState.FAILED, reason="KeyError: '[red]x[/]'")
    result = run_dirt("--project", str(service.settings.project_dir), "status", "r123")
    assert result.returncode == 0, result.stderr
    assert "KeyError: '[red]x[/]'" in result.stdout
