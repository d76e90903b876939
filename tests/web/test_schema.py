"""schemathesis against /openapi.json: whatever it sends, dirt answers without a 5xx.

Every documented operation gets a few generated requests (bounded: the suite stays fast), sent
with a valid API token so the writes reach dirt's validation instead of stopping at 401.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from dirt.service import Service
from dirt.web.app import create_app
from tests.web.conftest import seed_docs

EXAMPLES = 25


def test_no_server_errors(service: Service) -> None:
    service.submit(seed_docs())
    service.save_node("n1", {"cpu_count": 2, "hostname": "n1"})
    token = service.create_token("schemathesis")
    app = create_app(service, bind_host="0.0.0.0")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    checked = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/events":
            continue  # an endless stream; the browser tests cover it

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            if case.path == "/api/changes" and isinstance(case.query, dict):
                case.query["timeout"] = 0  # long polls would only make the run slow
            case.call_and_validate(
                headers={"Authorization": f"Bearer {token}"}, checks=[not_a_server_error]
            )

        check()
        checked.append(operation.label)
    assert len(checked) >= 12, checked
