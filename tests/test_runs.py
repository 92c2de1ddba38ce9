"""No zombies: every run says where it lives; a run whose process died is marked FAILED."""

import os
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

from conftest import start_endless_run, store_uri
from mlflow.tracking import MlflowClient

from style_exp.app import runs


def _run(tags, started_s):
    return SimpleNamespace(data=SimpleNamespace(tags=tags),
                           info=SimpleNamespace(start_time=int(1000 * started_s)))


def _dead_pid():
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def test_which_runs_count_as_dead():
    here, now = socket.gethostname(), time.time()
    alive = {runs.HOST: here, runs.PID: str(os.getpid())}
    assert runs.why_dead(_run(alive, now)) is None
    # Our own pid, but the run began long before this process: the number was reused.
    assert "ended without finishing" in runs.why_dead(_run(alive, 1.0))
    dead = {runs.HOST: here, runs.PID: str(_dead_pid())}
    assert f"process {dead[runs.PID]} on {here} ended" in runs.why_dead(_run(dead, now))
    elsewhere = {runs.HOST: "far-away", runs.PID: "7", runs.HEARTBEAT: str(now - 7200)}
    assert "no heartbeat for 120 min from process 7 on far-away" in runs.why_dead(
        _run(elsewhere, now - 9000))
    assert runs.why_dead(_run({**elsewhere, runs.HEARTBEAT: str(now - 60)}, now - 9000)) is None
    assert "unknown host" in runs.why_dead(_run({}, now - 7200))  # from before these tags


def test_a_run_killed_with_sigkill_is_reaped(tmp_path, photos, capsys):
    uri = store_uri(tmp_path)
    process = start_endless_run(tmp_path, photos, "tracking.log_every=1")
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("style_exp").experiment_id])
    tags = run.data.tags
    assert tags[runs.HOST] == socket.gethostname() and tags[runs.PID] == str(process.pid)
    assert float(tags[runs.HEARTBEAT]) >= run.info.start_time / 1000 - 1

    assert runs.main(["reap", "--tracking-uri", uri]) == 0  # alive: left alone
    assert client.get_run(run.info.run_id).info.status == "RUNNING"
    process.send_signal(signal.SIGKILL)
    process.communicate()
    capsys.readouterr()
    assert runs.main(["reap", "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out.endswith("1 run(s) marked FAILED\n")
    reaped = client.get_run(run.info.run_id)
    assert reaped.info.status == "FAILED"
    assert f"process {process.pid} on {socket.gethostname()} ended" in reaped.data.tags["error"]


def test_runs_elsewhere_are_reaped_after_the_limit(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("style_exp")
    silent = client.create_run(experiment, tags={runs.HOST: "far-away", runs.PID: "1"})
    assert runs.main(["reap", "--tracking-uri", uri]) == 0  # started just now: may be alive
    assert client.get_run(silent.info.run_id).info.status == "RUNNING"
    assert runs.main(["reap", "--tracking-uri", uri, "--stale-after-min", "0"]) == 0
    assert client.get_run(silent.info.run_id).info.status == "FAILED"
    assert "far-away" in capsys.readouterr().out
