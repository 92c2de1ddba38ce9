"""``run.py``'s side of the resident worker: hand the command to it, or say to run cold.

A cold ``python run.py`` spends about 4 s on imports before any work (README, "Fixed
cost"); a worker (``python -m style_exp.worker start``, ``app/worker.py``) has them
loaded. ``run.py`` calls :func:`hand_over` before it imports anything heavy: this module
imports only the standard library (and the cache folder's rule). The worker gets the
command line, the working folder, the environment and this process's stdin, stdout and
stderr (the descriptors themselves, ``SCM_RIGHTS``), so the run writes to the same
terminal or pipes; this process relays Ctrl-C, SIGTERM and SIGHUP to it and exits with
the job's exit code. Anything the worker cannot run exactly as a cold process would
runs cold, silently: no worker, a busy one (one job at a time), another launcher, Hydra's
own flags (``--cfg``, ``--help``...), or an environment that differs in what TensorFlow
read when the worker imported it (:data:`IMPORT_TIME_ENV`). ``STYLE_EXP_WORKER=0``
always runs cold.

The protocol: JSON objects, one a line, over a Unix socket (mode 0600) in
:func:`worker_dir`. Client: ``{"op": "job", ...}`` (with the three descriptors), then
``{"signal": N}`` for each signal. Worker: ``{"accepted": true, "pid": P}`` or
``{"refused": why}``, and at the end ``{"exit": code}``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path

from style_exp.spec.paths import default_cache_dir

WORKER_ENV = "STYLE_EXP_WORKER"  # "0": always run cold
DIR_ENV = "STYLE_EXP_WORKER_DIR"  # where the socket, pid record and log live
SOCKET, RECORD, LOG = "worker.sock", "worker.json", "worker.log"
ANSWER_S = 10.0  # a worker that does not answer the request in this time is not used
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# What TensorFlow, oneDNN, OpenMP, CUDA and Python read when they load (or where the
# weights are): a command whose values differ from the worker's runs cold.
IMPORT_TIME_ENV = ("TF_", "ONEDNN_", "CUDA_", "OMP_", "KMP_", "MKL_", "XLA_", "NVIDIA_",
                   "LD_", "PYTHON", "MALLOC_", "STYLE_EXP_CACHE", "STYLE_EXP_VERBOSE")
# Command-line flags a worker's job may carry; any other (Hydra's --cfg, --help, --info,
# -c, --config-dir ...) runs cold.
JOB_FLAGS = ("-m", "--multirun")
# Keys whose values TensorFlow takes once per process (thread pools; a tiled run's
# allocator, ``memory.configure_for_tiles``), or that start other processes (launchers):
# such a command runs cold.
COLD_KEYS = ("launcher", "threads.", "tiles")


def worker_dir() -> Path:
    """``$STYLE_EXP_WORKER_DIR``, or the cache folder (``~/.cache/style_exp``)."""
    return Path(os.environ.get(DIR_ENV) or default_cache_dir())


def import_time_env(env: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name.startswith(IMPORT_TIME_ENV)}


def handable(args: list[str]) -> bool:
    """Whether a worker runs these ``run.py`` arguments as a cold process would: the basic
    launcher, no Hydra flags, TensorFlow's thread pools as they are."""
    for arg in args:
        key = arg.split("=", 1)[0].lstrip("+~")
        if (arg.startswith("-") and arg not in JOB_FLAGS) or any(k in key for k in COLD_KEYS):
            return False
    return True


def send(sock: socket.socket, message: dict, fds: tuple[int, ...] = ()) -> None:
    data = json.dumps(message).encode() + b"\n"
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.sendall(data)


class Messages:
    """The JSON lines coming in on a socket."""

    def __init__(self, sock: socket.socket, received: bytes = b""):
        self.sock, self.buffer = sock, received

    def next(self) -> dict | None:
        """The next message; None once the other side has gone."""
        try:
            while b"\n" not in self.buffer:
                chunk = self.sock.recv(1 << 16)
                if not chunk:
                    return None
                self.buffer += chunk
        except OSError:
            return None
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)


def record() -> dict | None:
    """The running worker's record (pid, start, socket), if there is one."""
    try:
        return json.loads((worker_dir() / RECORD).read_text())
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet waited for, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process has that pid now
        return True
    with contextlib.suppress(OSError, IndexError):
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def clean_stale() -> None:
    """Remove the socket and record of a worker whose process is gone."""
    found = record()
    if found is not None and alive(int(found.get("pid", 0))):
        return
    for name in (SOCKET, RECORD):
        with contextlib.suppress(FileNotFoundError):
            (worker_dir() / name).unlink()


def connect(timeout: float = ANSWER_S) -> socket.socket | None:
    """A connection to the worker, or None (a stale socket is cleaned up)."""
    path = worker_dir() / SOCKET
    if not path.exists():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        clean_stale()
        return None
    except OSError:
        sock.close()
        return None
    return sock


def hand_over(argv: list[str]) -> int | None:
    """Run ``python run.py ARGS`` in the resident worker: its exit code, or None to run cold."""
    if os.environ.get(WORKER_ENV, "") == "0" or not handable(argv[1:]):
        return None
    sock = connect()
    if sock is None:
        return None
    script = os.path.abspath(argv[0])
    request = {"op": "job", "argv": [script, *argv[1:]], "cwd": os.getcwd(),
               "env": dict(os.environ), "project": os.path.dirname(os.path.realpath(script)),
               "python": sys.executable}
    messages = Messages(sock)
    try:
        send(sock, request, fds=(0, 1, 2))  # a closed stdin fails here: cold then
        answer = messages.next()
    except (OSError, ValueError):
        answer = None
    if not answer or not answer.get("accepted"):
        sock.close()
        return None
    return _follow(sock, messages, int(answer["pid"]))


def _follow(sock: socket.socket, messages: Messages, pid: int) -> int:
    """Relay signals until the job's exit code comes back."""
    relayed: list[int] = []

    def relay(signum: int, _frame: object) -> None:
        relayed.append(signum)
        if len(relayed) > 1:  # the worker ends the job at once; a third ends this process
            signal.signal(signum, signal.SIG_DFL)
        with contextlib.suppress(OSError):
            send(sock, {"signal": signum})

    for signum in STOP_SIGNALS:
        signal.signal(signum, relay)
    sock.settimeout(None)
    while (message := messages.next()) is not None:
        if "exit" in message:
            return int(message["exit"])
    if relayed:  # a second signal ended the worker, as it ends a cold process
        return 128 + relayed[-1]
    print(f"error: the resident worker (pid {pid}) ended during the job; its MLflow run is "
          "marked FAILED by the next run or `python -m style_exp.runs reap` "
          f"({worker_dir() / LOG})", file=sys.stderr)
    return 1
