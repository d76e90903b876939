"""Node agent: runs every task the master sends over one execnet channel.

Shipped as source text with ``gateway.remote_exec``; stdlib only, no imports of dirt.
TaskChannel, run_task, kill_group and the framing constants come from ``tasking.py``,
which ``dirt.remote.source()`` ships in front of this text. The master
keeps one gateway per node and one agent channel on it, multiplexed for all tasks.

master -> node, first the config ``{"isolation": "process"|"thread", "forkserver_source": str}``,
then any of:
    ("run", task_id, module_name, sha256, source_or_None, kwargs, timeout_or_None)
    ("kill", task_id)
    ("load",)
    ("stop",)
node -> master:
    ("ready", {"pid": int, "isolation": str, "python": str})   once, after the config
    ("done", task_id, outcome)    outcome: a tuple in the order of OUTCOME_FIELDS
    ("load", [l1, l5, l15], running_count)
    ("fatal", message)                                          then the agent exits

In "process" isolation tasks run in children of a warm fork server (see forkserver.py). If the
fork server dies, every task it was running is reported done with an error naming the cause,
and a new fork server is started for the next task; only when that start fails too does a
task fail with the start error (the agent itself stays up and keeps answering).

In "thread" isolation tasks run in threads of this process: fast, no isolation, timeouts and
kills only stop waiting for the thread (it is abandoned, not stopped).
"""

import contextlib
import heapq
import marshal
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback

FORKSERVER_START_TIMEOUT = 60.0
# The fork server's source comes as the first frame on its stdin rather than on the command
# line: argv is capped at 128 KiB per argument and would show the whole source in ps.
FORKSERVER_BOOTSTRAP = """\
import os
def read(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            raise SystemExit("dirt fork server: no source on stdin")
        data += chunk
    return data
source = read(int.from_bytes(read(4), "big"))
exec(compile(source, "<dirt forkserver>", "exec"), {"__name__": "__main__"})
"""


OUTCOME_FIELDS = (
    "results",
    "error",
    "exit_code",
    "signal",
    "timed_out",
    "killed",
    "duration",
    "output",
)


def outcome_dict(
    results=None,
    error=None,
    exit_code=None,
    sig=None,
    timed_out=False,
    killed=False,
    duration=0.0,
    output="",
):
    return {
        "results": results,
        "error": error,
        "exit_code": exit_code,
        "signal": sig,
        "timed_out": timed_out,
        "killed": killed,
        "duration": duration,
        "output": output,
    }


class Sender:
    """Serialises sends on the agent channel; task outcomes come from many threads."""

    def __init__(self, channel):
        self.channel = channel
        self.lock = threading.Lock()

    def send(self, message):
        with self.lock:
            self.channel.send(message)

    def done(self, task_id, outcome):
        try:
            # A tuple, not the dict: execnet's pure-Python unserialiser on the master pays per
            # string, and this message is sent once per task.
            self.send(("done", task_id, tuple(outcome[k] for k in OUTCOME_FIELDS)))
        except Exception as exc:
            if self.channel.isclosed():
                return
            # Most likely execnet could not serialise the results; the task still finished.
            name = unserialisable_type(outcome.get("results")) or type(exc).__name__
            fallback = dict(outcome, results=None, error=f"results not serialisable: {name}")
            with contextlib.suppress(Exception):
                self.send(("done", task_id, tuple(fallback[k] for k in OUTCOME_FIELDS)))


# process isolation -------------------------------------------------------------------------


class ForkServerClient:
    """One running fork server process and the tasks it is running."""

    def __init__(self, source, sender):
        self.sender = sender
        # Kept open for the fork server's lifetime, to quote its last words if it dies.
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FORKSERVER_BOOTSTRAP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            close_fds=True,
        )
        data = source.encode("utf-8")
        try:
            self.proc.stdin.write(HEADER.pack(len(data)) + data)
            self.proc.stdin.flush()
        except OSError:
            pass  # it died at once; the wait for "ready" below reports why
        self.out_fd = self.proc.stdout.fileno()
        self.buffer = b""
        self.lock = threading.Lock()
        self.write_lock = threading.Lock()
        # task_id -> child pid (None until the fork server says which)
        self.in_flight = {}
        self.known_shas = set()
        self.stopping = False
        self.dead = False
        message = self.read_message(FORKSERVER_START_TIMEOUT)
        if message is None or message[0] != "ready":
            reason = self.death_reason()
            self.close_files()
            raise RuntimeError(f"fork server did not start: {reason}")
        self.pid, self.tmpdir = message[1], message[2]
        self.reader = threading.Thread(target=self.read_loop, name="dirt-forkserver-reader")
        self.reader.daemon = True
        self.reader.start()

    def next_frame(self):
        """The next complete message in the buffer, or None."""
        if len(self.buffer) < HEADER.size:
            return None
        (size,) = HEADER.unpack_from(self.buffer)
        end = HEADER.size + size
        if len(self.buffer) < end:
            return None
        payload = self.buffer[HEADER.size : end]
        self.buffer = self.buffer[end:]
        return marshal.loads(payload)

    def read_message(self, timeout):
        """One message from the fork server, or None at EOF or after timeout seconds."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.out_fd, selectors.EVENT_READ)
            while True:
                message = self.next_frame()
                if message is not None:
                    return message
                wait = deadline - time.monotonic()
                if wait <= 0:
                    return None
                if not sel.select(wait):
                    continue
                chunk = os.read(self.out_fd, 1 << 20)
                if not chunk:
                    return None
                self.buffer += chunk

    def read_loop(self):
        while True:
            try:
                message = self.next_frame()
                if message is None:
                    # Blocking read: this thread has nothing else to do meanwhile.
                    chunk = os.read(self.out_fd, 1 << 20)
                    if not chunk:
                        break
                    self.buffer += chunk
                    continue
            except Exception:
                break
            kind = message[0]
            if kind == "done":
                task_id, outcome = message[1], message[2]
                with self.lock:
                    self.in_flight.pop(task_id, None)
                self.sender.done(task_id, outcome)
            elif kind == "started":
                with self.lock:
                    if message[1] in self.in_flight:
                        self.in_flight[message[1]] = message[2]
        self.on_eof()

    def on_eof(self):
        with self.lock:
            self.dead = True
            lost = dict(self.in_flight)
            self.in_flight.clear()
        if self.stopping and not lost:
            return
        reason = self.death_reason()
        # A fork server killed outright could not remove its own files.
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        for task_id, pid in lost.items():
            if pid is not None:
                # The children outlive their fork server; take them (and theirs) down.
                kill_group(pid)
            self.sender.done(task_id, outcome_dict(error=f"fork server died ({reason}); task lost"))

    def death_reason(self):
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        reason = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        try:
            self.stderr.seek(0)
            tail = self.stderr.read()[-2000:].decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            tail = ""
        if tail:
            reason += ": " + tail
        return reason

    def request(self, message):
        data = marshal.dumps(message)
        with self.write_lock:
            self.proc.stdin.write(HEADER.pack(len(data)) + data)
            self.proc.stdin.flush()

    def run(self, task_id, module_name, sha, source, kwargs, timeout):
        send_source = None if sha in self.known_shas else source
        with self.lock:
            if self.dead:
                return False
            self.in_flight[task_id] = None
        try:
            self.request(("run", task_id, module_name, sha, send_source, kwargs, timeout))
        except (OSError, ValueError):
            # The reader thread sees the EOF and reports this task with the others.
            return True
        self.known_shas.add(sha)
        return True

    def kill(self, task_id):
        with self.lock:
            if task_id not in self.in_flight:
                return
        with contextlib.suppress(OSError, ValueError):
            self.request(("kill", task_id))

    def running(self):
        with self.lock:
            return len(self.in_flight)

    def stop(self, timeout=10.0):
        self.stopping = True
        try:
            self.request(("stop",))
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.reader.is_alive():
            self.reader.join(timeout)
        self.close_files()

    def close_files(self):
        for fh in (self.proc.stdin, self.proc.stdout, self.stderr):
            with contextlib.suppress(OSError, ValueError):
                fh.close()


class ProcessRunner:
    def __init__(self, config, sender):
        self.source = config["forkserver_source"]
        self.sender = sender
        # Kept here too so a restarted fork server can be given sources again.
        self.sources = {}
        self.server = ForkServerClient(self.source, sender)

    def run(self, task_id, module_name, sha, source, kwargs, timeout):
        if source is not None:
            self.sources[sha] = source
        source = self.sources.get(sha)
        if source is None:
            self.sender.done(task_id, outcome_dict(error=f"agent has no source for {sha}"))
            return
        for _ in range(2):
            server = self.server
            if server is None or server.dead:
                try:
                    server = self.server = ForkServerClient(self.source, self.sender)
                except Exception as exc:
                    self.server = None
                    self.sender.done(task_id, outcome_dict(error=str(exc)))
                    return
            if server.run(task_id, module_name, sha, source, kwargs, timeout):
                return
        self.sender.done(task_id, outcome_dict(error="fork server keeps dying; task not run"))

    def kill(self, task_id):
        if self.server is not None:
            self.server.kill(task_id)

    def running(self):
        return 0 if self.server is None else self.server.running()

    def stop(self):
        if self.server is not None:
            self.server.stop()


# thread isolation --------------------------------------------------------------------------


class ThreadOutput:
    """sys.stdout/stderr stand-in that keeps each task thread's writes apart."""

    def __init__(self, fallback, local):
        self._fallback = fallback
        self._local = local

    def write(self, text):
        buf = getattr(self._local, "buf", None)
        if buf is None:
            return self._fallback.write(text)
        buf.append(text)
        self._local.size += len(text)
        if self._local.size > 4 * OUTPUT_TAIL:
            joined = "".join(buf)[-OUTPUT_TAIL:]
            buf[:] = [joined]
            self._local.size = len(joined)
        return len(text)

    def flush(self):
        if getattr(self._local, "buf", None) is None:
            self._fallback.flush()

    def __getattr__(self, name):
        return getattr(self._fallback, name)


class ThreadRunner:
    def __init__(self, sender):
        self.sender = sender
        self.codes = {}
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        # task_id -> [start, timeout]; a task leaves it when it is reported
        self.active = {}
        self.deadlines = []
        self.watchdog = None
        self.stopping = False
        self.local = threading.local()
        if not isinstance(sys.stdout, ThreadOutput):
            sys.stdout = ThreadOutput(sys.stdout, self.local)
            sys.stderr = ThreadOutput(sys.stderr, self.local)
        else:
            self.local = sys.stdout._local

    def run(self, task_id, module_name, sha, source, kwargs, timeout):
        code = self.codes.get(sha)
        if code is None:
            if source is None:
                self.sender.done(task_id, outcome_dict(error=f"agent has no source for {sha}"))
                return
            try:
                code = compile(source, f"<dirt task {module_name}>", "exec")
            except BaseException:
                self.sender.done(task_id, outcome_dict(error=traceback.format_exc()))
                return
            self.codes[sha] = code
        start = time.monotonic()
        with self.lock:
            self.active[task_id] = (start, timeout)
            if timeout is not None:
                heapq.heappush(self.deadlines, (start + timeout, task_id))
                self.ensure_watchdog()
                self.cond.notify()
        thread = threading.Thread(
            target=self.task_thread,
            args=(task_id, code, module_name, kwargs, start),
            name=f"dirt-task-{task_id}",
        )
        thread.daemon = True
        thread.start()

    def task_thread(self, task_id, code, module_name, kwargs, start):
        self.local.buf = []
        self.local.size = 0
        try:
            results, error = run_task(code, module_name, kwargs)
            if error is None:
                # Refuse what process isolation would refuse too, so both modes agree.
                bad = unserialisable_type(results)
                if bad is not None:
                    results, error = None, f"results not serialisable: {bad}"
        finally:
            output = "".join(self.local.buf)[-OUTPUT_TAIL:]
            self.local.buf = None
        self.finish(
            task_id,
            outcome_dict(
                results=results, error=error, duration=time.monotonic() - start, output=output
            ),
        )

    def finish(self, task_id, outcome):
        """Report a task once: whichever of completion, timeout or kill comes first wins."""
        with self.lock:
            if self.active.pop(task_id, None) is None:
                return
        self.sender.done(task_id, outcome)

    def ensure_watchdog(self):
        if self.watchdog is None:
            self.watchdog = threading.Thread(target=self.watch, name="dirt-watchdog")
            self.watchdog.daemon = True
            self.watchdog.start()

    def watch(self):
        while True:
            with self.lock:
                while not self.stopping:
                    now = time.monotonic()
                    while self.deadlines and self.deadlines[0][1] not in self.active:
                        heapq.heappop(self.deadlines)
                    if self.deadlines and self.deadlines[0][0] <= now:
                        break
                    wait = self.deadlines[0][0] - now if self.deadlines else None
                    self.cond.wait(wait)
                if self.stopping:
                    return
                _, task_id = heapq.heappop(self.deadlines)
                start, timeout = self.active[task_id]
            self.finish(
                task_id,
                outcome_dict(
                    error=f"task timed out after {timeout:g}s; its thread was abandoned",
                    timed_out=True,
                    duration=time.monotonic() - start,
                ),
            )

    def kill(self, task_id):
        with self.lock:
            entry = self.active.get(task_id)
        if entry is not None:
            self.finish(
                task_id,
                outcome_dict(
                    error="task was killed on request; its thread was abandoned",
                    killed=True,
                    duration=time.monotonic() - entry[0],
                ),
            )

    def running(self):
        with self.lock:
            return len(self.active)

    def stop(self):
        with self.lock:
            self.stopping = True
            self.active.clear()
            self.cond.notify_all()


# main loop ---------------------------------------------------------------------------------


def serve(channel):
    sender = Sender(channel)
    try:
        config = channel.receive()
        isolation = config.get("isolation", "process")
        if isolation == "process":
            runner = ProcessRunner(config, sender)
        elif isolation == "thread":
            runner = ThreadRunner(sender)
        else:
            raise ValueError(f"unknown isolation {isolation!r} (use 'process' or 'thread')")
    except Exception as exc:
        sender.send(("fatal", f"agent could not start: {exc}"))
        return
    sender.send(("ready", {"pid": os.getpid(), "isolation": isolation, "python": sys.executable}))
    try:
        while True:
            try:
                message = channel.receive()
            except Exception:
                # The master closed the channel or went away: stop like on ("stop",).
                break
            kind = message[0]
            if kind == "run":
                runner.run(*message[1:])
            elif kind == "kill":
                runner.kill(message[1])
            elif kind == "load":
                sender.send(("load", list(os.getloadavg()), runner.running()))
            elif kind == "stop":
                break
    except Exception:
        runner.stop()
        sender.send(("fatal", "agent failed:\n" + traceback.format_exc()))
        return
    runner.stop()


if __name__ == "__channelexec__":
    serve(channel)
