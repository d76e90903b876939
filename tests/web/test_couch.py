"""CouchDB's _bulk_docs: the original's curl command, unchanged, against a real server."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from dirt.service import Service
from dirt.web.app import create_app
from dirt.web.run import WebServer
from tests.conftest import need
from tests.web.conftest import make_client


def curl(url: str, data_file: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            "curl",
            "-sS",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            f"@{data_file}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_seed_documents_posted_with_curl(service: Service, tmp_path: Path) -> None:
    need(shutil.which("curl") is not None, "curl")
    seed = tmp_path / "r123.json"
    seed.write_text(
        json.dumps(
            {
                "docs": json.loads(
                    (resources.files("dirt") / "seed" / "test_data.json").read_text(
                        encoding="utf-8"
                    )
                )
            }
        ),
        encoding="utf-8",
    )
    server = WebServer(create_app(service, bind_host="127.0.0.1"), "127.0.0.1", 0)
    server.start()
    try:
        db_name = service.settings.project.database or service.settings.name
        result = curl(f"http://localhost:{server.port}/{db_name}/_bulk_docs", seed)
        body, _, status = result.stdout.rpartition("\n")
        assert status == "201", result.stdout + result.stderr
        answer = json.loads(body)
        assert [a["id"] for a in answer] == [
            "r123",
            "2e3dabbff38ca7f6fa05c5a0cbbc95a4",
            "2e3dabbff38ca7f6fa05c5a0cbbc9858",
            "r124",
            "dbe14f5601fd40bfb82a7666cbc766fc",
        ]
        assert all(a["ok"] is True and a["rev"].startswith("1-") for a in answer)
        assert {s.record.id for s in service.record_page()} == {"r123", "r124"}
        # The same documents again: rejected whole, one error per document, nothing stored.
        again = curl(f"http://localhost:{server.port}/{db_name}/_bulk_docs", seed)
        body, _, status = again.stdout.rpartition("\n")
        assert status == "400"
        errors = json.loads(body)
        assert len(errors) == 5
        assert errors[0]["id"] == "r123" and errors[0]["error"] == "forbidden"
        assert "already exists" in errors[0]["reason"]
        wrong = curl(f"http://localhost:{server.port}/nosuchdb/_bulk_docs", seed)
        assert wrong.stdout.endswith("404")
    finally:
        server.stop()


def test_bulk_docs_per_document_errors(service: Service) -> None:
    with make_client(create_app(service)) as c:
        db_name = service.settings.project.database or service.settings.name
        docs = [
            {"_id": "r1", "type": "record", "description": "fine"},
            {"_id": "t1", "type": "task", "record_id": "r1", "name": "no.such.module"},
            {"type": "task", "record_id": "r1", "name": "examples.simple"},
        ]
        response = c.post(f"/{db_name}/_bulk_docs", json={"docs": docs})
        assert response.status_code == 400
        answer = response.json()
        assert answer[0] == {"id": "r1", "error": "not_stored", "reason": answer[0]["reason"]}
        assert answer[1]["error"] == "forbidden" and "no.such.module" in answer[1]["reason"]
        assert c.get("/api/records/r1").status_code == 404
        ok = c.post(f"/{db_name}/_bulk_docs", json={"docs": [docs[0], docs[2]]})
        assert ok.status_code == 201
        made = ok.json()[1]["id"]
        assert c.get(f"/api/tasks/{made}").json()["record_id"] == "r1"
        assert c.post(f"/{db_name}/_bulk_docs", json=[docs[0]]).status_code == 400


def test_bulk_docs_needs_a_token_from_afar(service: Service) -> None:
    with make_client(create_app(service, bind_host="0.0.0.0"), host="198.51.100.2") as c:
        db_name = service.settings.project.database or service.settings.name
        response = c.post(f"/{db_name}/_bulk_docs", json={"docs": []})
        assert response.status_code == 401
