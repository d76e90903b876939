"""What is shipped to nodes: stdlib only, no newer than the Python floor, put together safely."""

from __future__ import annotations

import ast
import glob
import hashlib
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import dirt.remote
from dirt.dispatch.connection import NodeConnection, NodeLostError, Outcome, popen_spec
from dirt.remote import PARTS, SHIPPED, ShippingError, assemble, source
from dirt.remote.protocol import BOOTSTRAP, PYTHON_FLOOR

REMOTE = Path(dirt.remote.__file__).parent
README = Path(__file__).resolve().parents[2] / "README.md"
FLOOR = ".".join(map(str, PYTHON_FLOOR))


def shipped_texts() -> dict[str, str]:
    """Every text that runs on a node: each shipped program and the fork server's bootstrap."""
    return {**{name: source(name) for name in SHIPPED}, "bootstrap": BOOTSTRAP}


def imported_modules(text: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"relative import of {node.module}"
            found.add(node.module or "")
    return found


def test_every_remote_module_is_part_of_a_shipped_program() -> None:
    # So that the floor and stdlib checks below see every file that reaches a node.
    modules = {p.stem for p in REMOTE.glob("*.py")} - {"__init__"}
    assert modules == {part for parts in PARTS.values() for part in parts}


@pytest.mark.parametrize("name", [*SHIPPED, "bootstrap"])
def test_shipped_code_imports_only_the_standard_library(name: str) -> None:
    modules = imported_modules(shipped_texts()[name])
    foreign = {m for m in modules if m.split(".")[0] not in sys.stdlib_module_names}
    assert foreign == set()


def test_shipped_code_runs_on_the_python_floor(tmp_path: Path) -> None:
    vermin = Path(sys.executable).with_name("vermin")
    assert vermin.exists(), "vermin is missing: pip install -e '.[test]'"
    for name, text in shipped_texts().items():
        (tmp_path / f"{name}.py").write_text(text)
    done = subprocess.run(
        [
            str(vermin),
            f"-t={FLOOR}-",
            "--no-tips",
            "--violations",
            *sorted(str(p) for p in tmp_path.glob("*.py")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_program_compiles_with_its_future_import_first(name: str) -> None:
    tree = ast.parse(source(name))
    first = tree.body[0]
    assert isinstance(first, ast.ImportFrom) and first.module == "__future__"
    compile(tree, name, "exec")


def test_a_part_may_import_only_from_earlier_parts(tmp_path: Path) -> None:
    (tmp_path / "one.py").write_text("from dirt.remote.two import B\nA = 1\n")
    (tmp_path / "two.py").write_text("B = 2\n")
    with pytest.raises(ShippingError, match="only from the parts shipped before it"):
        assemble(("one", "two"), tmp_path)


def test_a_part_may_not_rename_or_invent_imports(tmp_path: Path) -> None:
    (tmp_path / "one.py").write_text("A = 1\n")
    (tmp_path / "two.py").write_text("from dirt.remote.one import A as C\n")
    (tmp_path / "three.py").write_text("from dirt.remote.one import Z\n")
    with pytest.raises(ShippingError, match="under its own name"):
        assemble(("one", "two"), tmp_path)
    with pytest.raises(ShippingError, match="under its own name"):
        assemble(("one", "three"), tmp_path)


def test_two_parts_may_not_define_the_same_name(tmp_path: Path) -> None:
    (tmp_path / "one.py").write_text("def run():\n    pass\n")
    (tmp_path / "two.py").write_text("class run:\n    pass\n")
    with pytest.raises(ShippingError, match=r"two\.py redefines 'run' of one\.py"):
        assemble(("one", "two"), tmp_path)


def test_assembly_drops_sibling_imports_and_hoists_the_future_import(tmp_path: Path) -> None:
    (tmp_path / "one.py").write_text(
        '"""One."""\nfrom __future__ import annotations\n\ndef f(x: int | None) -> int:\n'
        "    return 1\n"
    )
    (tmp_path / "two.py").write_text(
        "from __future__ import annotations\n\nfrom dirt.remote.one import (\n    f,\n)\n\n"
        "RESULT = f(None)\n"
    )
    text = assemble(("one", "two"), tmp_path)
    assert text.startswith("from __future__ import annotations\n")
    assert text.count("__future__") == 1
    assert "dirt.remote" not in text
    namespace: dict[str, object] = {}
    exec(compile(text, "assembled", "exec"), namespace)
    assert namespace["RESULT"] == 1


# the README --------------------------------------------------------------------------------


def test_readme_quotes_the_floor_where_it_says_what_a_node_needs() -> None:
    text = README.read_text(encoding="utf-8")
    needs = [line for line in text.splitlines() if "node needs" in line.lower()]
    assert needs, "the README no longer says what a node needs"
    for line in needs:
        assert f"Python {FLOOR}+" in line, line
    quoted = set(re.findall(r"Python (\d+\.\d+)\+", text))
    assert quoted == {FLOOR}, f"the README quotes other Python versions: {quoted}"


# on real interpreters ----------------------------------------------------------------------


def interpreter(major: int, minor: int) -> str | None:
    """A working pythonX.Y on this machine (on PATH, or one of pyenv's), else None."""
    name = f"python{major}.{minor}"
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = [
        *(str(Path(d) / name) for d in os.environ.get("PATH", "").split(os.pathsep) if d),
        *sorted(glob.glob(f"{root}/versions/{major}.{minor}.*/bin/{name}"), reverse=True),
        f"/usr/bin/{name}",
    ]
    for path in candidates:
        if not os.access(path, os.X_OK):
            continue
        try:
            done = subprocess.run(
                [path, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0 and done.stdout.strip() == f"({major}, {minor})":
            return path
    return None


def need(major: int, minor: int) -> str:
    # An optional cross-check: vermin above is the floor check that always runs.
    found = interpreter(major, minor)
    if found is None:
        pytest.skip(f"no python{major}.{minor} on this machine")
    return found


class Waiter:
    def __init__(self) -> None:
        self.outcome: Outcome | None = None
        self.event = threading.Event()

    def on_done(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.event.set()


@pytest.mark.parametrize("isolation", ["process", "thread"])
def test_the_agent_runs_tasks_on_the_floor_python(isolation: str) -> None:
    python = need(*PYTHON_FLOOR)
    task = (
        "import sys\n\ndef execute(n):\n    print('out')\n"
        "    return {'success': True, 'n': n, 'version': list(sys.version_info[:2])}\n"
    )
    waiter = Waiter()
    conn = NodeConnection(popen_spec(python), isolation, waiter.on_done, lambda ids, why: None)
    try:
        conn.open(timeout=60)
        assert conn.sysinfo()["version_info"][:2] == list(PYTHON_FLOOR)
        conn.run("t1", "tests.floor", task, hashlib.sha256(task.encode()).hexdigest(), {"n": 7}, 30)
        assert waiter.event.wait(30)
    finally:
        conn.close()
    assert waiter.outcome is not None
    assert waiter.outcome.error is None
    assert waiter.outcome.results == {"success": True, "n": 7, "version": list(PYTHON_FLOOR)}
    assert waiter.outcome.output == "out\n"


def test_the_agent_refuses_a_python_below_the_floor() -> None:
    major, minor = PYTHON_FLOOR
    python = need(major, minor - 1)
    conn = NodeConnection(popen_spec(python), "process", lambda o: None, lambda ids, why: None)
    with pytest.raises(NodeLostError) as caught:
        conn.open(timeout=60)
    conn.close()
    assert f"Python too old: {python} is {major}.{minor - 1}, the agent needs {FLOOR}" in str(
        caught.value
    )
