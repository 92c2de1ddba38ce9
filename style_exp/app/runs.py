"""No run left RUNNING: each run records where it lives, and dead ones are marked FAILED.

Every run is tagged with its host and process id and a heartbeat (the time of its
latest logged step). A run killed without a chance to say so (``kill -9``, the OOM
killer, a lost machine) stays RUNNING in MLflow; :func:`reap` finds such runs and
ends them FAILED with the reason: on this host when the process is gone, elsewhere
when the heartbeat is older than ``stale_after_s``. Each new run reaps its store,
and so does the command:

    python -m style_exp.runs reap [--tracking-uri URI] [--stale-after-min 60]

A run whose tracking server stopped answering queues its records in its directory and
keeps its process (so this host does not reap it) until they are sent or it gives up;
``sync`` sends what it left (``outbox.py``), ending the run as it ended:

    python -m style_exp.runs sync RUN_DIR
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Run, RunStatus, RunTag
from mlflow.tracking import MlflowClient

from style_exp.app.outbox import sync
from style_exp.app.schema import MLFLOW_HTTP_DEFAULTS, default_tracking_uri
from style_exp.spec.errors import Reported

HOST, PID, HEARTBEAT = "style_exp.host", "style_exp.pid", "style_exp.heartbeat"
STALE_AFTER_S = 3600.0  # a run elsewhere silent this long is taken for dead
PID_REUSE_SLACK_S = 5.0  # a process started this much after its run is another one


def liveness_tags() -> dict[str, str]:
    """Where this process runs, and a first heartbeat."""
    return {HOST: socket.gethostname(), PID: str(os.getpid()), HEARTBEAT: _now()}


def heartbeat() -> RunTag:
    """The tag that says the run was alive just now (sent with each logged step)."""
    return RunTag(HEARTBEAT, _now())


def _now() -> str:
    return f"{time.time():.0f}"


@dataclass(frozen=True)
class Reaped:
    run_id: str
    reason: str


def reap(tracking_uri: str, stale_after_s: float = STALE_AFTER_S) -> list[Reaped]:
    """End every RUNNING run of the store whose process is gone as FAILED, with the reason."""
    client = MlflowClient(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    reaped = []
    running = client.search_runs(experiments, "attributes.status = 'RUNNING'",
                                 max_results=10_000)
    for run in running:
        reason = why_dead(run, stale_after_s)
        if reason is not None:
            client.set_tag(run.info.run_id, "error", reason)
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FAILED))
            reaped.append(Reaped(run.info.run_id, reason))
    return reaped


def why_dead(run: Run, stale_after_s: float = STALE_AFTER_S) -> str | None:
    """Why ``run`` (RUNNING) cannot be running any more, or None if it may be."""
    tags = run.data.tags
    host, pid = tags.get(HOST), int(tags.get(PID, "0") or 0)
    if host == socket.gethostname() and pid:
        if not _alive(pid, run.info.start_time / 1000.0):
            return f"process {pid} on {host} ended without finishing the run (killed?)"
        return None
    last = float(tags.get(HEARTBEAT, run.info.start_time / 1000.0))
    silent = time.time() - last
    if silent > stale_after_s:
        return (f"no heartbeat for {silent / 60:.0f} min from process {pid or '?'} on "
                f"{host or 'an unknown host'} (limit {stale_after_s / 60:.0f} min)")
    return None


def _alive(pid: int, run_started: float) -> bool:
    """Whether ``pid`` is the run's process: it exists and is not a newer process that
    reused the number (Linux: its start time, from /proc)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    started = _process_start_time(pid)
    return started is None or started <= run_started + PID_REUSE_SLACK_S


def _process_start_time(pid: int) -> float | None:
    """When ``pid`` started (seconds since the epoch), where /proc tells."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text()
                    .splitlines() if line.startswith("btime"))
    except (OSError, IndexError, StopIteration, ValueError):
        return None
    if fields[0] == "Z":  # a zombie: exited, not yet waited for
        return float("inf")
    return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m style_exp.runs",
        description="Mark runs whose process is gone FAILED; send a run's queued records.")
    commands = parser.add_subparsers(dest="command", required=True)
    reap_command = commands.add_parser("reap", help="end dead RUNNING runs as FAILED")
    reap_command.add_argument("--tracking-uri", default=None,
                              help="default: sqlite:///<cwd>/runs/mlflow.db")
    reap_command.add_argument("--stale-after-min", type=float, default=STALE_AFTER_S / 60,
                              help="runs on other hosts silent this long count as dead")
    sync_command = commands.add_parser(
        "sync", help="send the records a run queued while its tracking server was away")
    sync_command.add_argument("run_dir", type=Path, help="the run's directory (its output)")
    args = parser.parse_args(argv)
    if args.command == "sync":
        return _sync(args.run_dir)
    reaped = reap(args.tracking_uri or default_tracking_uri(), 60 * args.stale_after_min)
    for run in reaped:
        print(f"{run.run_id} FAILED: {run.reason}")
    print(f"{len(reaped)} run(s) marked FAILED")
    return 0


def _sync(run_dir: Path) -> int:
    """``sync``: what it sent in one line, or why it could not (exit 2: no queue there,
    1: the store did not answer; run it again later)."""
    for name, value in MLFLOW_HTTP_DEFAULTS.items():  # not minutes on a server still away
        os.environ.setdefault(name, value)
    try:
        print(sync(run_dir))
    except Reported as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
