"""Fault test: the team server (PostgreSQL + MLflow) is stopped for 60 s in the middle of a
6-job joblib sweep and started again on its port. Every run goes on optimising, queues
its records on disk, replays them when the server answers, and ends FINISHED with every
metric step and image of the same sweep run without the outage.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

from conftest import PROJECT, cli_env, run_sweep
from mlflow.tracking import MlflowClient
from test_cluster import cli, client_env, experiment_runs, team_server  # noqa: F401 (fixtures)

from style_exp.app.outbox import QUEUE_DIR, sync
from style_exp.app.sweeps import sweep_id

OUTAGE_S = 60.0
SEEDS = "0,1,2,3,4,5"
# Jobs long enough to be optimising when the last of them has started (its first
# checkpoint is the signal), with a metric every 5 steps and an image every 30.
SWEEP = ["size=48", "iterations=120", "optimizer=adam", "stop.tolerance=0", "progress=false",
         "tracking.log_every=5", "tracking.checkpoint_every=30", f"seed={SEEDS}"]
FIRST_CHECKPOINT = "checkpoints/000030.png"
IMAGE_STEP = re.compile(r"^images/(\w+)\+step\+(\d+)\+timestamp\+(\d+)\+.*(?<!compressed)\.png$")


def record(client: MlflowClient, run) -> dict[str, object]:
    """What must survive an outage: each metric's steps, each image series' steps, the
    files, the status. Metric steps in the order of their time stamps (the order the run
    logged them in), which a replay out of order would not keep."""
    run_id = run.info.run_id
    metrics = {}
    for key in run.data.metrics:
        history = sorted(client.get_metric_history(run_id, key),
                         key=lambda m: (m.timestamp, m.step))
        metrics[key] = [m.step for m in history]
    images: dict[str, list[int]] = {}
    for info in client.list_artifacts(run_id, "images"):
        found = IMAGE_STEP.match(info.path)
        if found:
            images.setdefault(found.group(1), []).append(int(found.group(2)))
    return {"status": run.info.status, "metrics": metrics,
            "images": {key: sorted(steps) for key, steps in images.items()},
            "files": sorted(a.path for a in client.list_artifacts(run_id)),
            "error": run.data.tags.get("error")}


def sweep_records(uri: str, experiment: str) -> dict[str, dict[str, object]]:
    client, runs = experiment_runs(uri, experiment)
    return {run.data.tags["sweep.seed"]: record(client, run) for run in runs}


def test_a_sweep_rides_out_a_60_s_server_outage(client_env, tmp_path):  # noqa: F811
    started, served = time.monotonic(), client_env  # the team server, its credentials set
    directory, port = served.directory, int(served.url.rsplit(":", 1)[1])
    env = {**os.environ, **served.env, "TF_CPP_MIN_LOG_LEVEL": "2"}
    sweep_dir = tmp_path / "sweep"
    done = []
    sweeping = threading.Thread(target=lambda: done.append(run_sweep(
        ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=6", *SWEEP,
         "tracking.experiment=outage", f"hydra.sweep.dir={sweep_dir}"], tmp_path, env,
        timeout=900)))
    sweeping.start()
    jobs = [sweep_dir / str(job) for job in range(6)]
    while not all((job / FIRST_CHECKPOINT).exists() for job in jobs):
        assert sweeping.is_alive(), done[0].stderr[-3000:]
        time.sleep(0.2)
    optimising = time.monotonic()
    stopped = cli(["-m", "style_exp.server", "stop", "--dir", str(directory)], env, PROJECT)
    assert stopped.returncode == 0, stopped.stderr
    outage_began = time.monotonic()
    # The same sweep without an outage (basic launcher, a local store), meanwhile.
    baseline = subprocess.Popen(
        [sys.executable, str(PROJECT / "run.py"), "-m", *SWEEP,
         f"tracking.uri=sqlite:///{tmp_path / 'baseline.db'}", "tracking.experiment=outage",
         f"hydra.sweep.dir={tmp_path / 'baseline'}"], cwd=tmp_path, env=cli_env(),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - outage_began)))
    assert any(sweeping.is_alive() and (job / QUEUE_DIR).is_dir() for job in jobs)
    restarted = cli(["-m", "style_exp.server", "start", "--dir", str(directory),
                     "--port", str(port)], env, PROJECT)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    outage_s = time.monotonic() - outage_began
    sweeping.join(timeout=900)
    (sweep,) = done
    swept = time.monotonic()
    baseline_err = baseline.communicate(timeout=900)[1]
    assert baseline.returncode == 0, baseline_err[-3000:]
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    print(f"every job optimising after {optimising - started:.0f} s, server away "
          f"{outage_s:.0f} s, sweep ended {swept - outage_began - outage_s:.0f} s after the "
          f"server was back, baseline {time.monotonic() - outage_began:.0f} s after the stop, "
          f"test {time.monotonic() - started:.0f} s")

    # Every job lived through the outage: each queued records while the server was away.
    assert all((job / QUEUE_DIR / "journal.jsonl").is_file() for job in jobs)
    assert "the tracking store did not answer" in sweep.stderr
    assert "the tracking store answers again" in sweep.stderr
    outage = sweep_records(served.url, "outage")
    expected = sweep_records(f"sqlite:///{tmp_path / 'baseline.db'}", "outage")
    assert sorted(outage) == sorted(expected) == SEEDS.split(",")
    for seed, run in outage.items():
        assert run == expected[seed], seed
        assert run["status"] == "FINISHED" and run["error"] is None
        assert run["metrics"]["loss/total"] == [1, *range(5, 121, 5)]
        assert run["images"] == {"progress": list(range(0, 121, 30)), "output": [0]}
    assert f"Sweep {sweep_id(sweep_dir)}: 6 runs" in sweep.stdout
    for job in jobs:  # what sync would send: nothing, all of it reached the server
        assert sync(job).startswith("nothing to send")
    print(f"checked after {time.monotonic() - started:.0f} s")
