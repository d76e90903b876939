"""The dispatcher's store writes: CPU per task of this checkout next to a baseline, in one run.

    .venv/bin/python bench/store.py [--tasks 6000] [--rounds 5] [--baseline main] [--postgres]

What is timed is the master's side of `Service.dispatch` as the dispatcher calls it, without
nodes: trivial tasks are submitted (not timed), then batches of 32 go through the store, one
transaction per step, each step storing the previous batch's results and reserving the next.

- folded: the usual path of a trivial task, which finishes before its start is written: it is
  reserved, then started and finished in one UPDATE plus an attempts INSERT.
- started: a task that runs longer than a step: reserved, started (UPDATE + attempts INSERT),
  then finished (UPDATE + attempts UPDATE), three steps.

The baseline is the `src` tree of a git revision (`git archive`), run by the same interpreter
and the same venv, so both sides differ only in dirt's code (statements, migrations, pragmas).
Each run is a fresh process on a fresh store (SQLite in a temp folder, or with --postgres a
fresh database on a PostgreSQL server started in a temp folder, as the tests do); the two sides
take turns within a round. CPU is this process's (user + system) over the timed part: the
master's; on PostgreSQL, the CPU of the server's backends for the run's database is shown
apart ("+ server"). Figures are medians over the rounds; the ratio (of all the CPU: master and
server) is the median of each round's ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BATCH = 32
TRIVIAL_MODULE = "def execute():\n    return {'success': True}\n"
MODES = ("folded", "started")


def server_cpu(database: str | None) -> float:
    """CPU seconds of the PostgreSQL backends serving `database` (their titles name it)."""
    if database is None:
        return 0.0
    total = 0.0
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes().decode(errors="replace")
            if f" {database} " not in title:
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def child(tasks: int, mode: str, url: str | None) -> dict[str, float]:
    """One run, in this process, of the dirt on sys.path; CPU and wall time per task."""
    from sqlalchemy import func, select

    from dirt.config import load_settings
    from dirt.db import schema
    from dirt.models import Finished, TaskState
    from dirt.project import create_project
    from dirt.service import Service

    project = create_project(Path(tempfile.mkdtemp(prefix="dirt-bench-store-")) / "p")
    (project / "tasks" / "trivial.py").write_text(TRIVIAL_MODULE)
    environ = {"DIRT_DATABASE_URL": url} if url else {}
    service = Service(load_settings(project, environ=environ))
    docs: list[dict[str, Any]] = [{"_id": "r1", "type": "record"}]
    docs += [{"type": "task", "record_id": "r1", "name": "trivial"} for _ in range(tasks)]
    service.submit(docs)
    ids = [t.id for t in service.waiting_tasks(tasks)]
    now = time.time()

    def results(batch: list[str], started: float | None) -> list[Finished]:
        return [
            Finished(
                task_id=t,
                attempt=1,
                node="local",
                state=TaskState.SUCCEEDED,
                results={"success": True},
                reason=None,
                module_sha256="0" * 64,
                started=started,
            )
            for t in batch
        ]

    batches = [ids[i : i + BATCH] for i in range(0, len(ids), BATCH)] + [[], []]
    reserved: list[str] = []
    running: list[str] = []
    database = url.rsplit("/", 1)[1] if url else None
    server = server_cpu(database)
    cpu, wall = time.process_time(), time.perf_counter()
    for batch in batches:
        if mode == "folded":
            reserved = service.dispatch(results(reserved, now), [], batch)[1]
        else:
            starts = [(t, "local", now, 1) for t in reserved]
            finished = results(running, None)
            running, reserved = service.dispatch(finished, starts, batch)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    server = server_cpu(database) - server
    with service.engine.connect() as conn:
        query = select(schema.tasks.c.state, func.count()).group_by(schema.tasks.c.state)
        states: dict[str, int] = {state: n for state, n in conn.execute(query)}
    service.close()
    if states != {"succeeded": len(ids)}:
        raise SystemExit(f"the run did not store every result: {states}")
    return {
        "cpu_us": cpu / tasks * 1e6,
        "server_us": server / tasks * 1e6,
        "wall_us": wall / tasks * 1e6,
    }


def baseline_tree(revision: str, into: Path) -> Path:
    """The `src` folder of `revision`, unpacked under `into`."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src"],
        check=True,
        capture_output=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def run_side(src: Path, tasks: int, mode: str, url: str | None) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", "--tasks", str(tasks), "--mode", mode]
    if url:
        command += ["--url", url]
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"a run of {src} failed:\n{done.stderr}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=6000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", default="main", help="git revision to compare with")
    parser.add_argument("--postgres", action="store_true", help="a PostgreSQL store")
    parser.add_argument("--mode", choices=MODES, default=None, help="one mode (default: both)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.tasks, args.mode, args.url)))
        return

    server = None
    if args.postgres:
        sys.path.insert(0, str(ROOT))
        from tests.postgres import PostgresServer

        server = PostgresServer()
        server.start()
    try:
        with tempfile.TemporaryDirectory(prefix="dirt-bench-baseline-") as folder:
            sides = {
                "baseline": baseline_tree(args.baseline, Path(folder)),
                "this": ROOT / "src",
            }
            for src in sides.values():
                # Compiled once, not on each run's imports (PYTHONDONTWRITEBYTECODE may be set).
                subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], check=True)
            store = "PostgreSQL" if server else "SQLite"
            print(f"{store}, {args.tasks} tasks, batches of {BATCH}, {args.rounds} rounds;")
            print(f"baseline: {args.baseline}; CPU per task of the master, median (wall time)")
            for mode in [args.mode] if args.mode else MODES:
                figures: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
                for _ in range(args.rounds):
                    for name, src in sides.items():
                        url = server.new_database() if server else None
                        figures[name].append(run_side(src, args.tasks, mode, url))
                        if server and url:
                            server.drop_database(url)
                report(mode, figures)
    finally:
        if server is not None:
            server.stop()


def report(mode: str, figures: dict[str, list[dict[str, float]]]) -> None:
    def median(name: str, key: str) -> float:
        return statistics.median(f[key] for f in figures[name])

    ratios = [
        (this["cpu_us"] + this["server_us"]) / (base["cpu_us"] + base["server_us"])
        for this, base in zip(figures["this"], figures["baseline"], strict=True)
    ]

    def side(name: str) -> str:
        text = f"{median(name, 'cpu_us'):6.1f} us"
        if median(name, "server_us"):
            text += f" + server {median(name, 'server_us'):5.1f} us"
        return text + f" ({median(name, 'wall_us'):.0f})"

    base, this = (side(name) for name in figures)
    print(
        f"  {mode:8} baseline {base}   this {this}"
        f"   this/baseline {statistics.median(ratios):.2f}"
        f"   [runs: {' '.join(f'{r:.2f}' for r in ratios)}]"
    )


if __name__ == "__main__":
    main()
