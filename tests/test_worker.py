"""The resident worker: a command handed to it ends as the same command run cold would
(image, MLflow record, exit codes, signals), and whatever it cannot run so runs cold."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    ENDLESS,
    PROJECT,
    cli_env,
    gradient_image,
    run_cli,
    store_uri,
    stripes_image,
    write_image,
)
from mlflow.tracking import MlflowClient
from PIL import Image

from style_exp.app import handoff, runs
from style_exp.app.handoff import DIR_ENV, LOG, RECORD, SOCKET, WORKER_ENV
from style_exp.app.worker import ask_status


@dataclass
class Worker:
    directory: Path
    pid: int
    env: dict[str, str]

    def status(self) -> dict | None:
        os.environ[DIR_ENV] = str(self.directory)
        try:
            return ask_status()
        finally:
            del os.environ[DIR_ENV]

    def jobs(self) -> int:
        return self.status()["jobs"]

    def log(self) -> str:
        return (self.directory / LOG).read_text()


FOLDERS: list[Path] = []  # removed once the module's tests are done


@pytest.fixture(scope="module", autouse=True)
def _remove_folders() -> Iterator[None]:
    yield
    for folder in FOLDERS:
        shutil.rmtree(folder, ignore_errors=True)


def short_folder() -> Path:
    """A temporary folder with a short path: a socket's path has at most 107 bytes."""
    FOLDERS.append(Path(tempfile.mkdtemp(prefix="sw")))
    return FOLDERS[-1]


def start_worker(idle_min: float = 30) -> Worker:
    """A worker of its own in a short temporary folder (never the user's cache folder)."""
    directory = short_folder()
    env = cli_env(**{DIR_ENV: str(directory)})
    done = subprocess.run([sys.executable, "-m", "style_exp.worker", "start", "--idle-min",
                           str(idle_min)], cwd=PROJECT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr + (directory / LOG).read_text()
    pid = json.loads((directory / RECORD).read_text())["pid"]
    assert (directory / SOCKET).stat().st_mode & 0o777 == 0o600
    return Worker(directory, pid, env)


def end(worker: Worker) -> None:
    """``python -m style_exp.worker stop`` (SIGTERM to the recorded pid), or SIGKILL."""
    if handoff.alive(worker.pid):
        done = subprocess.run([sys.executable, "-m", "style_exp.worker", "stop"], cwd=PROJECT,
                              env=worker.env, capture_output=True, text=True, timeout=150)
        assert done.stdout == f"worker pid {worker.pid} stopped\n", done.stderr
    if handoff.alive(worker.pid):
        os.kill(worker.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    started = start_worker()
    yield started
    end(started)


@pytest.fixture
def inputs(tmp_path) -> list[str]:
    photo = write_image(tmp_path / "photo.png", gradient_image(40, 56))
    painting = write_image(tmp_path / "painting.jpg", stripes_image(48, 48))
    return [f"content={photo}", f"style={painting}", "size=48", "iterations=4", "init=noise",
            "precision=float32", "progress=false"]


def handed(args: list[str], cwd: Path, worker: Worker, **env: str):
    return run_cli(args, cwd, **{DIR_ENV: str(worker.directory), **env})


def _run(uri: str):
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("style_exp").experiment_id])
    return run


def test_a_handed_job_records_what_a_cold_run_records(worker, tmp_path, inputs):
    """Same image, params, tags (but the process's own) and metric keys; the run's pid is
    the worker's, so the reaper watches the process that runs it."""
    outputs = {}
    for mode, extra in (("cold", {WORKER_ENV: "0"}), ("warm", {})):
        jobs = worker.jobs()
        done = handed([*inputs, "seed=3", f"hydra.run.dir={tmp_path / mode}",
                       f"tracking.uri={store_uri(tmp_path / mode)}"], tmp_path, worker, **extra)
        assert done.returncode == 0, done.stderr
        assert worker.jobs() == jobs + (mode == "warm")
        assert f"output     {tmp_path / mode / 'output.png'}" in done.stdout
        outputs[mode] = _run(store_uri(tmp_path / mode))
    cold, warm = outputs["cold"], outputs["warm"]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "cold" / "output.png")),
                                  np.asarray(Image.open(tmp_path / "warm" / "output.png")))
    assert warm.data.tags[runs.PID] == str(worker.pid) != cold.data.tags[runs.PID]

    def same(values: dict[str, str], mode: str) -> dict[str, str]:  # paths name the run dir
        own = {runs.PID, runs.HEARTBEAT, "mlflow.source.name", "mlflow.log-model.history"}
        return {k: v.replace(str(tmp_path / mode), "RUN") for k, v in values.items()
                if k not in own}

    assert same(warm.data.params, "warm") == same(cold.data.params, "cold")
    assert same(warm.data.tags, "warm").keys() == same(cold.data.tags, "cold").keys()
    assert warm.data.metrics.keys() == cold.data.metrics.keys()
    assert warm.info.status == cold.info.status == "FINISHED"


def test_errors_are_one_line_with_the_cold_exit_codes(worker, tmp_path, inputs):
    jobs = worker.jobs()
    for args, line in [(["loss.stlye_weight=3"], "error: Key 'stlye_weight' not in "
                        "'LossConfig' (loss.stlye_weight)"),
                       ([f"content={tmp_path / 'nope.jpg'}"],
                        f"error: image file not found ({tmp_path}/nope.jpg)")]:
        done = handed([*inputs, *args, f"tracking.uri={store_uri(tmp_path)}"], tmp_path, worker)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines()[0] == line, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) <= 2
    assert worker.jobs() == jobs + 2


def _endless(tmp_path: Path, inputs: list[str], worker: Worker) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, str(PROJECT / "run.py"), *inputs, "size=32", *ENDLESS,
         "tracking.checkpoint_every=2", f"tracking.uri={store_uri(tmp_path)}",
         f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=tmp_path, env={**worker.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    deadline = time.monotonic() + 240
    while not (tmp_path / "out" / "checkpoints" / "000002.png").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    return process


def test_ctrl_c_stops_the_run_killed_and_the_worker_serves_on_a_busy_one_runs_cold(
        worker, tmp_path, inputs):
    jobs = worker.jobs()
    process = _endless(tmp_path, inputs, worker)
    assert worker.status()["busy"]
    second = handed(["size=0"], tmp_path, worker)  # while the worker is busy: cold
    assert second.returncode == 2 and second.stderr.startswith("error: must be positive")
    assert "runs cold: busy with another job" in worker.log()
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert stderr.strip().splitlines() == [line for line in stderr.strip().splitlines()
                                           if line.startswith("stopped by Ctrl-C")]
    assert (tmp_path / "out" / "output.png").is_file()
    run = _run(store_uri(tmp_path))
    assert run.info.status == "KILLED" and run.data.tags[runs.PID] == str(worker.pid)
    assert worker.jobs() == jobs + 1 and not worker.status()["busy"]
    # served, and the stop was that job's alone: the next one runs to its end
    again = handed([*inputs, f"hydra.run.dir={tmp_path / 'again'}",
                    f"tracking.uri={store_uri(tmp_path / 'again')}"], tmp_path, worker)
    assert again.returncode == 0, again.stderr
    assert worker.jobs() == jobs + 2


def test_a_client_killed_outright_stops_its_job_as_sighup_would(worker, tmp_path, inputs):
    jobs = worker.jobs()
    process = _endless(tmp_path, inputs, worker)
    process.kill()  # the terminal's process gone: nobody would relay a signal
    process.communicate(timeout=60)
    deadline = time.monotonic() + 120
    while f"job {jobs + 1} exit" not in worker.log() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert f"job {jobs + 1} exit 129 " in worker.log()  # 128 + SIGHUP
    run = _run(store_uri(tmp_path))
    assert run.info.status == "KILLED" and (tmp_path / "out" / "output.png").is_file()


def test_what_a_worker_cannot_run_as_a_cold_process_runs_cold(worker, tmp_path):
    jobs = worker.jobs()
    for args, env in [(["size=0"], {WORKER_ENV: "0"}),
                      (["size=0"], {"TF_ENABLE_ONEDNN_OPTS": "0"}),
                      (["size=0", "threads.intra_op=1"], {}), (["size=0", "tiles=64"], {}),
                      (["-m", "size=0", "hydra/launcher=joblib"], {})]:
        done = handed(args, tmp_path, worker, **env)
        assert done.returncode == 2 and "must be positive" in done.stderr, done.stderr
    assert "runs cold: TF_ENABLE_ONEDNN_OPTS differs" in worker.log()
    assert worker.jobs() == jobs
    assert not handoff.handable(["--cfg", "job"]) and handoff.handable(["-m", "seed=1,2"])


def test_a_stale_socket_is_cleaned_up_and_the_command_runs_cold(tmp_path):
    directory = short_folder()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (directory / RECORD).write_text(f'{{"pid": {dead}}}')
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(directory / SOCKET))
    listener.close()  # the file stays, nobody listens: connection refused
    done = run_cli(["size=0"], tmp_path, **{DIR_ENV: str(directory)})
    assert done.returncode == 2 and "must be positive" in done.stderr
    assert not (directory / SOCKET).exists() and not (directory / RECORD).exists()


def test_a_worker_that_dies_mid_job_is_said_in_one_line_and_its_run_reaped(tmp_path, inputs):
    dying = start_worker()
    try:
        process = _endless(tmp_path, inputs, dying)
        os.kill(dying.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=60)
        deadline = time.monotonic() + 60
        while handoff.alive(dying.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        end(dying)
    assert process.returncode == 1
    (line,) = stderr.strip().splitlines()
    assert line.startswith(f"error: the resident worker (pid {dying.pid}) ended during the job")
    assert runs.main(["reap", "--tracking-uri", store_uri(tmp_path)]) == 0
    assert _run(store_uri(tmp_path)).info.status == "FAILED"
    done = run_cli(["size=0"], tmp_path, **{DIR_ENV: str(dying.directory)})  # stale: cold
    assert done.returncode == 2 and not (dying.directory / SOCKET).exists()


def test_the_worker_ends_after_its_idle_time():
    idle = start_worker(idle_min=0.05)  # 3 s
    try:
        deadline = time.monotonic() + 60
        while handoff.alive(idle.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not handoff.alive(idle.pid)
    finally:
        end(idle)
    assert not (idle.directory / SOCKET).exists() and "no job for 0.05 min" in idle.log()


def test_stop_during_a_job_stops_it_like_sigterm_then_ends_the_worker(worker, tmp_path, inputs):
    """Last: it ends the module's worker."""
    process = _endless(tmp_path, inputs, worker)
    end(worker)  # `python -m style_exp.worker stop`, checked to say it stopped
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143 and stderr.startswith("stopped by SIGTERM"), stderr
    assert _run(store_uri(tmp_path)).info.status == "KILLED"
    assert not handoff.alive(worker.pid) and not (worker.directory / SOCKET).exists()
