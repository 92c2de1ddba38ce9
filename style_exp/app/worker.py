"""The resident worker: a process that keeps TensorFlow, MLflow, Hydra and the run's
modules loaded, and the weights, network and compiled steps warm (``job.WARM``), and
runs the commands ``run.py`` hands it (``handoff.py``), one at a time.

    python -m style_exp.worker start [--idle-min 60]   # returns once it answers
    python -m style_exp.worker status
    python -m style_exp.worker stop

A job runs in the worker's main thread as ``run.py`` would run it (``cli.serve``: the
same exit codes, one-line errors and signal handling) with the command's argv, working
folder, environment and stdin/stdout/stderr (the client's descriptors put on 0, 1 and
2), all restored afterwards. A signal the client relays is raised in the main thread as
that signal would be in a cold process: the first stops the run (best image kept, run
KILLED, exit 128+N); the second, by then the signal's default action, ends the worker,
and the run it leaves RUNNING is reaped like any dead process's (``runs.reap``: its
``style_exp.pid`` tag is the worker's). A client that goes away mid-job stops it as
SIGHUP would. SIGTERM to the worker (``stop``) stops a running job the same way and
then ends the worker; so does ``--idle-min`` without jobs.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import queue
import runpy
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from style_exp.app import cli, handoff
from style_exp.app.handoff import LOG, RECORD, SOCKET, Messages, send, worker_dir
from style_exp.engine import stopping

PROJECT = Path(__file__).resolve().parents[2]  # where run.py is
READY_S = 300.0  # `start` waits this long for the worker to answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m style_exp.worker",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["start", "stop", "status", "serve"])
    parser.add_argument("--idle-min", type=float, default=60.0,
                        help="end after this many minutes without a job (default 60)")
    args = parser.parse_args(argv)
    if args.command == "serve":  # what `start` runs, detached
        return Worker(args.idle_min * 60).serve()
    return {"start": start, "stop": stop, "status": status}[args.command](args.idle_min)


def ask_status() -> dict | None:
    sock = handoff.connect()
    if sock is None:
        return None
    with sock:
        try:
            send(sock, {"op": "status"})
            return Messages(sock).next()
        except OSError:
            return None


def status(_idle_min: float = 0) -> int:
    found = ask_status()
    if found is None:
        print(f"no worker ({worker_dir() / SOCKET})")
        return 1
    print(f"worker pid {found['pid']}: up {found['uptime_s'] / 60:.1f} min, "
          f"{found['jobs']} job(s) served, {'busy' if found['busy'] else 'idle'}, "
          f"ends after {found['idle_min']:g} min idle ({worker_dir() / SOCKET})")
    return 0


def start(idle_min: float) -> int:
    """Start a detached worker and return once it answers (or say why it could not)."""
    found = ask_status()
    if found is not None:
        print(f"a worker is running already (pid {found['pid']}); "
              "`python -m style_exp.worker stop` ends it")
        return 0
    directory = worker_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    started = time.monotonic()
    with open(directory / LOG, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "style_exp.worker", "serve", "--idle-min", str(idle_min)],
            cwd=PROJECT, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            start_new_session=True)
    while (found := ask_status()) is None:
        if process.poll() is not None or time.monotonic() - started > READY_S:
            print(f"error: the worker did not start ({directory / LOG})", file=sys.stderr)
            return 1
        time.sleep(0.2)
    print(f"worker pid {found['pid']} ready in {time.monotonic() - started:.1f} s: "
          f"`python run.py ...` runs in it; it ends after {idle_min:g} min idle "
          f"({directory / SOCKET})")
    return 0


def stop(_idle_min: float = 0) -> int:
    """SIGTERM to the pid recorded beside the socket (a running job stops as with SIGTERM),
    then wait for it to end."""
    found = handoff.record()
    pid = int(found["pid"]) if found else 0
    if not pid or not handoff.alive(pid):
        handoff.clean_stale()
        print(f"no worker ({worker_dir() / SOCKET})")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 120
    while handoff.alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if handoff.alive(pid):
        print(f"error: worker pid {pid} did not end within 120 s after SIGTERM", file=sys.stderr)
        return 1
    handoff.clean_stale()
    print(f"worker pid {pid} stopped")
    return 0


class Worker:
    """The serving process: loads once, then runs each accepted job in its main thread."""

    def __init__(self, idle_s: float):
        self.idle_s = idle_s
        self.env = handoff.import_time_env(dict(os.environ))  # what TensorFlow will read
        self.started = time.time()
        self.jobs = 0
        self.busy = False  # a job is accepted and not finished (guarded by lock)
        self.running = False  # the main thread is in a job: relayed signals go to it
        self.relayed: list[int] = []
        self.lock = threading.Lock()
        self.queue: queue.Queue = queue.Queue()
        self.log = open(worker_dir() / LOG, "a", buffering=1)  # noqa: SIM115 (process-long)
        self.task: Callable[[], None] | None = None

    def say(self, line: str) -> None:
        self.log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {line}\n")

    def serve(self) -> int:
        self.task = _load()
        for signum in handoff.STOP_SIGNALS:
            signal.signal(signum, _quit)
        listener = self._listen()
        self.say(f"ready, {time.time() - self.started:.1f} s after the start")
        try:
            threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
            while True:
                try:
                    item = self.queue.get(timeout=self.idle_s)
                except queue.Empty:
                    self.say(f"no job for {self.idle_s / 60:g} min: ending")
                    break
                if not self._run(*item):
                    break
        except SystemExit:
            self.say("ended by a signal")
        finally:
            listener.close()
            mine = handoff.record()
            if mine is not None and mine.get("pid") == os.getpid():
                for name in (SOCKET, RECORD):
                    with contextlib.suppress(FileNotFoundError):
                        (worker_dir() / name).unlink()
        return 0

    def _listen(self) -> socket.socket:
        directory = worker_dir()
        path = directory / SOCKET
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # `start` found no worker answering there
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        umask = os.umask(0o177)  # the socket is created 0600: only this user hands jobs
        try:
            listener.bind(str(path))
        finally:
            os.umask(umask)
        listener.listen(8)
        temporary = directory / f"{RECORD}.{os.getpid()}"
        temporary.write_text(json.dumps(
            {"pid": os.getpid(), "started": self.started, "socket": str(path)}))
        temporary.replace(directory / RECORD)
        return listener

    def _accept(self, listener: socket.socket) -> None:
        """Answer each connection: a status, a refusal, or a job queued for the main thread."""
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(handoff.ANSWER_S)
            _, uid, _ = struct.unpack("3i", conn.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            if uid not in (os.getuid(), 0):  # the socket's mode says so already
                conn.close()
                continue
            try:
                data, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
                messages = Messages(conn, data)
                request = messages.next() or {}
            except (OSError, ValueError):
                conn.close()
                continue
            if request.get("op") == "status":
                with contextlib.suppress(OSError), conn:
                    send(conn, {"pid": os.getpid(), "uptime_s": time.time() - self.started,
                                "jobs": self.jobs, "busy": self.busy,
                                "idle_min": self.idle_s / 60})
                continue
            refusal = self._refusal(request, fds)
            if refusal:
                self.say(f"runs cold: {refusal}")
                for fd in fds:
                    os.close(fd)
                with contextlib.suppress(OSError), conn:
                    send(conn, {"refused": refusal})
                continue
            with contextlib.suppress(OSError):
                send(conn, {"accepted": True, "pid": os.getpid()})
            self.queue.put((conn, messages, request, fds))

    def _refusal(self, request: dict, fds: list[int]) -> str:
        """Why this process cannot run the job as a cold process would ("" if it can)."""
        if request.get("op") != "job" or len(fds) != 3:
            return "not a job with three descriptors"
        if request.get("project") != str(PROJECT) or request.get("python") != sys.executable:
            return f"another checkout or interpreter: {request.get('project')}"
        theirs = handoff.import_time_env(request.get("env", {}))
        differing = sorted(name for name in {*theirs, *self.env}
                           if theirs.get(name) != self.env.get(name))
        if differing:
            return f"{differing[0]} differs from the worker's"
        if not os.path.isdir(request.get("cwd", "")):
            return "no working folder"
        with self.lock:
            if self.busy:
                return "busy with another job"
            self.busy = True
        return ""

    def _run(self, conn: socket.socket, messages: Messages, request: dict,
             fds: list[int]) -> bool:
        """Run one job in the client's context; False when the worker should end after it."""
        started = time.monotonic()
        self.relayed = []
        conn.settimeout(None)
        with _as_client(request, fds):
            stopping.clear()
            with self.lock:
                self.running = True
            threading.Thread(target=self._relay, args=(messages,), daemon=True).start()
            try:
                code = cli.serve(self.task)
            except KeyboardInterrupt as stop:  # landed outside the app's own handling
                code = 128 + getattr(stop, "signum", signal.SIGINT)
            except SystemExit as stop:  # relayed before the app set its handlers (_quit)
                code = int(stop.code)
            finally:
                self._end_job()
        asked = [signum for signum in stopping.requested() if signum not in self.relayed]
        with contextlib.suppress(OSError), conn:
            send(conn, {"exit": code})
        with self.lock:
            self.jobs += 1
            self.busy = False
        self.say(f"job {self.jobs} exit {code} after {time.monotonic() - started:.1f} s: "
                 f"{' '.join(request['argv'][1:])}")
        if asked:
            self.say(f"stopped by signal {asked[0]} sent to the worker: ending")
        return not asked

    def _relay(self, messages: Messages) -> None:
        """Raise each signal the client relays in the main thread, as the signal itself
        would be; a client gone mid-job is SIGHUP, as for a closed terminal."""
        main = threading.main_thread().ident
        while True:
            message = messages.next()
            signum = signal.SIGHUP if message is None else message.get("signal")
            if signum:
                with self.lock:
                    if not self.running:
                        return
                    self.relayed.append(signum)
                    signal.pthread_kill(main, signum)
            if message is None:
                return

    def _end_job(self) -> None:
        """No more relays, and the worker's own handlers back, even if a relayed signal
        lands meanwhile (its stop then has nothing left to stop)."""
        while True:
            try:
                with self.lock:
                    self.running = False
                for signum in handoff.STOP_SIGNALS:
                    signal.signal(signum, _quit)
                return
            except KeyboardInterrupt:
                continue


def _quit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _load() -> Callable[[], None]:
    """What ``run.py`` imports, and what a job imports and builds on first use:
    what a cold process spends its first seconds on."""
    cli.quiet_start_up()
    os.environ["TF_XLA_FLAGS"] = cli.with_xla_cache(os.environ.get("TF_XLA_FLAGS", ""))
    run_py = runpy.run_path(str(PROJECT / "run.py"), run_name="style_exp_worker_run")
    task = run_py["main"]
    # Hydra finds conf/ beside the file of a task defined in __main__, as in `python run.py`
    inspect.unwrap(task).__module__ = "__main__"
    _warm_up(task)
    return task


def _warm_up(task: Callable[[], None]) -> None:
    """Run one tiny demo job into a scratch store: a first job imports about a thousand
    modules on first use (MLflow's SQL store and its migrations, tracing, tqdm's
    notebook check ...) and loads the default weights and network; measured (load 6-7),
    a 64 px job right after the imports took 22.8 s, the same job again 3.6 s."""
    with tempfile.TemporaryDirectory() as scratch:
        request = {"env": dict(os.environ), "cwd": scratch, "argv": [
            str(PROJECT / "run.py"), "size=32", "iterations=2", "progress=false",
            f"tracking.uri=sqlite:///{scratch}/mlflow.db", f"hydra.run.dir={scratch}/run"]}
        with _as_client(request, [os.open(os.devnull, os.O_RDONLY), os.dup(1), os.dup(2)]):
            code = cli.serve(task)
    stopping.clear()
    if code:
        raise RuntimeError(f"the warm-up job ended with exit code {code}")


@contextlib.contextmanager
def _as_client(request: dict, fds: list[int]):
    """The client's stdio (on descriptors 0-2 and as sys.std*), environment, working
    folder and argv, for the job; the worker's own afterwards."""
    streams = sys.stdin, sys.stdout, sys.stderr
    env, cwd, argv = dict(os.environ), os.getcwd(), sys.argv
    for stream in streams[1:]:
        stream.flush()
    saved = [os.dup(number) for number in (0, 1, 2)]
    for number, fd in enumerate(fds):
        os.dup2(fd, number)
        os.close(fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1 if os.isatty(1) else -1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(request["env"])
    try:
        os.chdir(request["cwd"])
        sys.argv = list(request["argv"])
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        sys.stdin, sys.stdout, sys.stderr = streams
        for number, fd in enumerate(saved):
            os.dup2(fd, number)  # the client's descriptors are closed here
            os.close(fd)
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        sys.argv = argv
