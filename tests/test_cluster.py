"""Integration: the team tracking server (PostgreSQL + MLflow), a Ray sweep on a real
single-node cluster bound to loopback, and SLURM's launcher through submitit_local.

One server and one Ray head per module. Nothing is skipped: a missing component fails
with what to install (CI installs requirements-cluster.txt and PostgreSQL).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from conftest import (
    EXIT_AFTER_SUMMARY_S,
    PROJECT,
    cli_env,
    gradient_image,
    run_config,
    run_sweep,
    stripes_image,
    write_image,
)
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from PIL import Image

from style_exp.app import compare, parse, resources
from style_exp.app.sweeps import sweep_id
from style_exp.app.tracking import experiment_id
from style_exp.cluster import server
from style_exp.engine import video
from style_exp.engine.videoio import write_video
from style_exp.engine.weights import default_cache_dir
from style_exp.spec.search import STUDY_STORAGE_ENV, masked
from style_exp.spec.settings import ConfigError

CLUSTER_EXPERIMENT = "cluster"
TINY = ["size=48", "iterations=5", "progress=false", "tracking.log_every=1"]
# Ray binds to loopback only, and without token auth whatever ~/.ray holds.
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
# How a Ray component says another process took the port it was given.
BIND_FAILED = ("Failed to bind", "address already in use")


def require(program: str) -> str:
    found = shutil.which(program) or (server.pg_binary(program) if program == "initdb" else None)
    if not found:
        pytest.fail(f"{program} is missing: pip install -r requirements-cluster.txt "
                    "and apt-get install postgresql (.ci/run does both)")
    return found


def private_base(prefix: str) -> Path:
    """A short directory the postgres user can reach (pytest's tmp dirs are 0700 root)."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    base.chmod(0o711)
    return base


def cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300):
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


@dataclass
class Server:
    directory: Path
    env: dict[str, str]  # client.env
    console: str  # what `start` printed

    @property
    def url(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def password(self) -> str:
        return self.env["MLFLOW_TRACKING_PASSWORD"]

    @property
    def study_storage(self) -> str:
        return self.env[STUDY_STORAGE_ENV]

    @property
    def study_password(self) -> str:
        return urlsplit(self.study_storage).password


def read_env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


@pytest.fixture(scope="module")
def team_server():
    require("initdb")
    base = private_base("style_exp_srv_")
    directory = base / "srv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
    started = cli(["-m", "style_exp.server", "start", "--dir", str(directory),
                   "--port", "0"], env, PROJECT)  # the server binds a free port itself
    assert started.returncode == 0, started.stderr[-2000:]
    state = json.loads((directory / "server.json").read_text())
    yield Server(directory, read_env_file(directory / "client.env"),
                 started.stdout + started.stderr)
    stopped = cli(["-m", "style_exp.server", "stop", "--dir", str(directory)], env, PROJECT)
    assert stopped.returncode == 0, stopped.stderr
    assert not server.alive(state["mlflow_pid"]) and not server.alive(state["postgres_pid"])
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def client_env(team_server, monkeypatch):
    """This process as a client of the team server (for in-process compare/reproduce)."""
    for name, value in team_server.env.items():
        monkeypatch.setenv(name, value)
    return team_server


def our_ray_processes(temp_dir: Path) -> list[int]:
    """Pids of raylet/gcs_server processes started with our temp dir."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                command = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(temp_dir) in command and ("raylet" in command or "gcs_server" in command):
                found.append(int(entry.name))
    return found


@dataclass
class RayHead:
    address: str
    stray_cache: Path  # the weights cache a worker would use without the driver's


def wait_for_node(head: subprocess.Popen, temp_dir: Path, log: Path,
                  env: dict[str, str]) -> str | None:
    """The head's address once `ray status` lists a node (it exits 0 before that);
    None when the head died because a port it was given got taken meanwhile."""
    deadline, said = time.monotonic() + 120, ""
    address_file = temp_dir / "ray_current_cluster"  # where `ray start` writes the address
    while time.monotonic() < deadline:
        if head.poll() is not None:
            if any(words in log.read_text(errors="replace") for words in BIND_FAILED):
                return None
            pytest.fail(f"ray start --head exited early: see {log}")
        if address_file.is_file():
            address = address_file.read_text().strip()
            status = subprocess.run(["ray", "status", "--address", address], env=env,
                                    capture_output=True, text=True, timeout=60)
            if " node_" in status.stdout:
                return address
            said = (status.stderr.strip().splitlines() or [""])[0]
        time.sleep(1)
    pytest.fail(f"the Ray head did not come up within 120 s ({said})")


def stop_ray_head(head: subprocess.Popen, temp_dir: Path) -> list[int]:
    """SIGTERM to `ray start --block` (not its group: that takes ~30 s); what is left."""
    if head.poll() is None:
        head.send_signal(signal.SIGTERM)
        head.wait(timeout=60)
    deadline = time.monotonic() + 30
    while our_ray_processes(temp_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    return our_ray_processes(temp_dir)


@pytest.fixture(scope="module")
def ray_head():
    """One loopback-only Ray node, started with `ray start --head --block`, stopped by pid.

    Ray binds its own free ports (port 0) except the Ray client server's, which must be
    named: when another process takes that one first, the head dies and is started again.
    Its workers get a weights cache of their own (empty) and no package index, so a job
    that does not use the driver's STYLE_EXP_CACHE fails instead of downloading.
    """
    require("ray")
    base = private_base("style_exp_ray_")
    stray_cache = base / "stray_cache"
    env = {**os.environ, **RAY_ENV, "STYLE_EXP_CACHE": str(stray_cache), "PIP_NO_INDEX": "1"}
    started: list[tuple[subprocess.Popen, Path]] = []
    try:
        for attempt in range(3):
            temp_dir, log_path = base / f"t{attempt}", base / f"head{attempt}.log"
            command = ["ray", "start", "--head", "--block", "--port", "0",
                       "--node-ip-address", "127.0.0.1", "--dashboard-agent-listen-port", "0",
                       "--ray-client-server-port", str(server.free_port(server.LOOPBACK)),
                       "--num-cpus", "2", "--memory", str(3 * 2**30),
                       "--object-store-memory", str(100 * 2**20), "--temp-dir", str(temp_dir),
                       "--include-dashboard", "false", "--disable-usage-stats"]
            with open(log_path, "wb") as log:
                head = subprocess.Popen(command, cwd=base, env=env, stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            started.append((head, temp_dir))
            address = wait_for_node(head, temp_dir, log_path, env)
            if address:
                break
        else:
            pytest.fail(f"the Ray head lost its ports to other processes 3 times: see {base}")
        yield RayHead(address, stray_cache)
    finally:
        left = [pid for head, temp_dir in started for pid in stop_ray_head(head, temp_dir)]
        shutil.rmtree(base, ignore_errors=True)
        assert not left, f"raylet/gcs_server still running after SIGTERM: {left}"


@pytest.fixture(scope="module")
def ray_sweep(team_server, ray_head, tmp_path_factory, weights):
    """4 deterministic jobs on the Ray cluster logging to the team server.

    The workers read the weights cache this machine already filled (the ``weights``
    fixture makes sure), named by the driver's STYLE_EXP_CACHE, which the launcher
    preset forwards: no worker downloads.
    """
    root = tmp_path_factory.mktemp("ray_sweep")
    env = {**os.environ, **team_server.env, **RAY_ENV,
           "STYLE_EXP_CACHE": str(default_cache_dir()), "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = run_sweep(["-m", "hydra/launcher=ray",
                      f"hydra.launcher.ray.init.address={ray_head.address}", "seed=0,1,2,3",
                      *TINY, "determinism=true", f"tracking.experiment={CLUSTER_EXPERIMENT}",
                      f"hydra.sweep.dir={root / 'sweep'}"], root, env, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.after_summary_s < EXIT_AFTER_SUMMARY_S  # the driver disconnects at once
    return done, root


def experiment_runs(uri: str, experiment: str = CLUSTER_EXPERIMENT, query: str = ""):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment} on {uri}"
    return client, client.search_runs([found.experiment_id], query)


def printed_compare_command(output: str, sweep: str, runs: int) -> list[str]:
    """The summary the launching process prints once every job is done (callbacks.py):
    the sweep's id with its run count, then the command comparing it."""
    lines = output.splitlines()
    header = lines.index(f"Sweep {sweep}: {runs} runs")  # ValueError: not printed
    label, command = lines[header + 1].split(maxsplit=1)
    assert label == "compare", lines[header:header + 3]
    return shlex.split(command)


def test_server_refuses_missing_and_wrong_credentials(team_server):
    probe = server.probe_url(team_server.url)
    assert server.status_of(probe) == 401
    assert server.status_of(probe, server.basic_auth("admin", "not-the-password")) == 401
    assert server.status_of(probe, server.basic_auth("admin", team_server.password)) == 200
    assert (team_server.directory / "client.env").stat().st_mode & 0o777 == 0o600
    assert (team_server.directory / "secrets.json").stat().st_mode & 0o777 == 0o600
    state = json.loads((team_server.directory / "server.json").read_text())
    assert listening_addresses(int(state["db_address"].split(":")[1])) == {"127.0.0.1"}
    # --port 0: the port the server bound, read back, is the one clients are given
    assert team_server.url == f"http://127.0.0.1:{state['port']}" and state["port"] > 0
    assert listening_addresses(state["port"]) == {"127.0.0.1"}
    assert "client.env" in team_server.console and "stop with" in team_server.console


def listening_addresses(port: int) -> set[str]:
    """IPv4 addresses with a TCP socket listening on ``port`` (from /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:
            found.add(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found


def test_ray_sweep_finishes_every_job_on_the_team_server(client_env, ray_head, ray_sweep,
                                                         tmp_path):
    done, root = ray_sweep
    client, runs = experiment_runs(client_env.url)
    sweep_runs = [r for r in runs if "sweep_id" in r.data.tags]
    assert len(sweep_runs) == 4 and all(r.info.status == "FINISHED" for r in sweep_runs)
    assert {r.data.tags["sweep.seed"] for r in sweep_runs} == {"0", "1", "2", "3"}
    assert len({r.data.tags["sweep_id"] for r in sweep_runs}) == 1
    assert all(r.data.tags["threads.allotted_cpus"] == "1" for r in sweep_runs)
    for run in sweep_runs:
        path = Path(client.download_artifacts(run.info.run_id, "output.png", str(tmp_path)))
        assert max(np.asarray(Image.open(path)).shape[:2]) == 48
    # The workers used the driver's filled cache: none looked at its own (a download
    # would have created it, and fails there without a package index).
    assert not ray_head.stray_cache.exists()
    assert "Initializing ray with config" in done.stdout + done.stderr
    sweep = sweep_runs[0].data.tags["sweep_id"]
    assert sweep == sweep_id(root / "sweep")
    assert printed_compare_command(done.stdout, sweep, 4) == [
        "python", "-m", "style_exp.compare", "--sweep", sweep, "--experiment", CLUSTER_EXPERIMENT]


def test_no_credential_in_any_output_or_record(client_env, ray_sweep, tmp_path):
    """Neither the admin's password nor the study database's (client.env's, which the
    Ray preset forwards to the workers and Ray's launcher logs) shows anywhere."""
    done, root = ray_sweep
    for password in (client_env.password, client_env.study_password):
        assert password not in client_env.console
        assert password not in done.stdout + done.stderr
        for path in root.rglob("*"):  # sweep dir: multirun.yaml, .hydra/, run logs
            if path.is_file() and path.suffix in (".yaml", ".log", ".txt", ".json"):
                assert password not in path.read_text(errors="replace"), path
    client, runs = experiment_runs(client_env.url)
    for run in runs:
        assert_no_secret_in_run(client, run, client_env, tmp_path)


def assert_no_secret_in_run(client: MlflowClient, run, served: Server, folder: Path) -> None:
    """No password of the server's in the run's params, tags or text artifacts."""
    passwords = (served.password, served.study_password)
    assert not any(p in json.dumps([run.data.params, run.data.tags]) for p in passwords)
    target = folder / run.info.run_id
    target.mkdir()
    downloaded = Path(client.download_artifacts(run.info.run_id, "", str(target)))
    for path in downloaded.rglob("*"):
        if path.is_file() and path.suffix in (".yaml", ".txt", ".json"):
            text = path.read_text(errors="replace")
            assert not any(p in text for p in passwords), path


def test_compare_and_reproduce_work_against_the_server(client_env, ray_sweep, tmp_path):
    """The compare command the sweep printed, then a pixel-identical reproduction: the
    sweep ran with determinism=true on this machine (README: exit 0 = identical)."""
    done, root = ray_sweep
    command = printed_compare_command(done.stdout, sweep_id(root / "sweep"), 4)
    assert command[:3] == ["python", "-m", "style_exp.compare"]
    assert compare.main([*command[3:], "--out", str(tmp_path / "compare")]) == 0
    assert (tmp_path / "compare" / "contact_sheet.png").is_file()
    _, runs = experiment_runs(client_env.url)
    original = next(r for r in runs if r.data.tags.get("sweep.seed") == "0")
    # A process of its own, as a user runs it: determinism=true switches TensorFlow's
    # deterministic ops on for the whole process, for good, which would reach later tests.
    done = subprocess.run(
        [sys.executable, "-m", "style_exp.reproduce", original.info.run_id,
         "--out", str(tmp_path / "again")], cwd=PROJECT, env=cli_env(),
        capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "identical:" in done.stdout
    _, after = experiment_runs(client_env.url, query=f"tags.reproduces = '{original.info.run_id}'")
    assert len(after) == 1 and after[0].info.status == "FINISHED"


def test_video_resume_downloads_frames_from_the_server(client_env, compose_config, tmp_path,
                                                       monkeypatch):
    style = tmp_path / "style.png"
    Image.fromarray(stripes_image(40, 40).astype(np.uint8)).save(style)
    frames = [gradient_image(32, 40, seed) for seed in range(3)]
    clip = write_video(frames, tmp_path / "clip.mp4", fps=8)
    overrides = [f"content={clip}", f"style={style}", "size=40", "iterations=5",
                 "video.frame_iterations=3", "progress=false", "tracking.experiment=video_cluster"]
    cfg = compose_config(overrides)
    original, calls = video.stylize, []

    def interrupted_at_frame_2(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(video, "stylize", interrupted_at_frame_2)
    with pytest.raises(KeyboardInterrupt):
        run_config(cfg, tmp_path / "first", overrides)
    shutil.rmtree(tmp_path / "first")  # as if it had run on another worker
    monkeypatch.setattr(video, "stylize", original)
    resumed = compose_config([*overrides, "video.resume=true"])
    run_config(resumed, tmp_path / "second", [*overrides, "video.resume=true"])
    _, runs = experiment_runs(client_env.url, "video_cluster", "attributes.status = 'FINISHED'")
    assert runs[0].data.tags["video.reused_frames"] == "2"


def test_submitit_local_sweep_logs_to_the_team_server(client_env, tmp_path):
    env = {**os.environ, **client_env.env, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = run_sweep(["-m", "hydra/launcher=submitit_local", "seed=0,1", *TINY,
                      "tracking.experiment=submitit", "hydra.launcher.timeout_min=10",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, env, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.after_summary_s < EXIT_AFTER_SUMMARY_S
    assert client_env.password not in done.stdout + done.stderr
    _, runs = experiment_runs(client_env.url, "submitit")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["sweep.seed"] for r in runs} == {"0", "1"}
    sweep = sweep_id(tmp_path / "sweep")
    assert {r.data.tags["sweep_id"] for r in runs} == {sweep}
    assert printed_compare_command(done.stdout, sweep, 2) == [
        "python", "-m", "style_exp.compare", "--sweep", sweep, "--experiment", "submitit"]


def test_parallel_jobs_agree_on_one_new_experiment_on_the_server(client_env):
    """Four jobs starting at once into an experiment that does not exist yet (a parallel
    sweep into a new experiment), five times over: no job fails, all take one experiment.
    PostgreSQL refuses all but one creation; the others must take the winner's."""
    for attempt in range(5):
        name = f"race-{attempt}-{secrets.token_hex(3)}"
        start = threading.Barrier(4)

        def job(name: str = name, start: threading.Barrier = start) -> str:
            start.wait()
            return experiment_id(client_env.url, name)

        with ThreadPoolExecutor(4) as pool:
            ids = [future.result() for future in [pool.submit(job) for _ in range(4)]]
        assert len(set(ids)) == 1, ids
        assert MlflowClient(client_env.url).get_experiment_by_name(name).experiment_id == ids[0]


def test_new_users_may_read_but_not_write(client_env, monkeypatch):
    """README: users made with AuthServiceClient get read access by default."""
    from mlflow.server.auth.client import AuthServiceClient

    experiment = MlflowClient(client_env.url).create_experiment("readable")
    password = secrets.token_urlsafe(16)
    AuthServiceClient(client_env.url).create_user("reviewer", password)  # as admin
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "reviewer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    reviewer = MlflowClient(client_env.url)
    assert reviewer.get_experiment(experiment).name == "readable"
    with pytest.raises(MlflowException, match="403 != 200.*Permission denied"):
        reviewer.create_run(experiment)


def test_server_uses_and_remembers_an_existing_database(team_server, monkeypatch):
    """--backend-store-uri: a second server on a database of the first one's PostgreSQL,
    started again without the option, still on that database (README: remembered)."""
    import psycopg2

    keys = json.loads((team_server.directory / "secrets.json").read_text())
    host, port = json.loads((team_server.directory / "server.json").read_text())[
        "db_address"].split(":")
    connection = psycopg2.connect(host=host, port=port, user=server.DB_USER,
                                  password=keys["db_password"], dbname="postgres")
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("CREATE DATABASE existing")
    connection.close()
    second = team_server.directory.parent / "second"
    uri = f"postgresql://{server.DB_USER}:{keys['db_password']}@{host}:{port}/existing"
    for backend_store_uri in (uri, None):
        state = server.start(second, server.LOOPBACK, 0, server.LOOPBACK, backend_store_uri)
        try:
            assert state["postgres_pid"] is None and not (second / "postgres").exists()
            given = read_env_file(second / "client.env")
            assert STUDY_STORAGE_ENV not in given  # not our database: no study database
            assert "no study database made: --backend-store-uri" in server.report_start(
                second, state)
            for name, value in given.items():
                monkeypatch.setenv(name, value)
            client = MlflowClient(state["url"])
            if backend_store_uri:
                client.create_experiment("kept in existing")
            else:  # the database of the first start, not a new one
                assert client.get_experiment_by_name("kept in existing") is not None
        finally:
            assert server.stop(second) == [f"mlflow server (pid {state['mlflow_pid']})"]


def test_postgres_takes_another_port_when_its_port_was_taken(monkeypatch):
    """PostgreSQL cannot choose its port: the one probed free may be bound by another
    process before PostgreSQL binds it, and start then tries another."""
    base = private_base("style_exp_pg_")
    probe_free = server.free_port
    try:
        layout = server.prepare_dir(base / "srv")
        server.init_cluster(layout, server.load_secrets(layout)["db_password"])
        with socket.socket() as taken:
            taken.bind((server.LOOPBACK, 0))
            taken.listen()
            probes = iter([taken.getsockname()[1]])  # the first probe answers a taken port
            monkeypatch.setattr(server, "free_port",
                                lambda host: next(probes, 0) or probe_free(host))
            pid, port = server.start_postgres(layout, server.LOOPBACK)
            try:
                assert port != taken.getsockname()[1] and server.alive(pid)
                assert listening_addresses(port) == {"127.0.0.1"}
            finally:
                server.stop_postgres(layout.postgres, pid)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def connects(storage: str, database: str) -> bool:
    """Whether ``storage``'s role and password open ``database`` on its PostgreSQL."""
    import psycopg2

    parts = urlsplit(storage)
    try:
        psycopg2.connect(host=parts.hostname, port=parts.port, user=parts.username,
                         password=parts.password, dbname=database, connect_timeout=10).close()
    except psycopg2.OperationalError:
        return False
    return True


def test_the_study_database_is_made_for_its_own_role_only(team_server):
    """client.env names the study database on the server's PostgreSQL; its password
    (every search worker holds it) opens that database and not MLflow's."""
    keys = json.loads((team_server.directory / "secrets.json").read_text())
    state = json.loads((team_server.directory / "server.json").read_text())
    assert team_server.study_storage == (
        f"postgresql+psycopg2://{server.STUDY_USER}:{keys['study_password']}@"
        f"{state['db_address']}/{server.STUDY_DB}")
    assert len({keys["study_password"], keys["db_password"], keys["admin_password"]}) == 3
    assert connects(team_server.study_storage, server.STUDY_DB)
    assert not any(connects(team_server.study_storage, name) for name in server.DATABASES)
    assert f"{STUDY_STORAGE_ENV} in client.env" in team_server.console
    assert team_server.study_password not in team_server.console


def test_an_older_dir_gets_its_study_database_on_its_next_start_and_keeps_it():
    """A DIR from before the study database (secrets.json without its password) gets one
    on its next start; later starts make nothing twice and keep the password."""
    base = private_base("style_exp_old_")
    try:
        layout = server.prepare_dir(base / "srv")
        old = {name: secrets.token_urlsafe(8) for name in server.SECRET_KEYS[:3]}
        server.write_private(layout.secrets, json.dumps(old))
        keys = server.load_secrets(layout)
        assert keys.items() > old.items() and keys["study_password"]
        assert server.load_secrets(layout) == keys  # kept from now on
        assert layout.secrets.stat().st_mode & 0o777 == 0o600
        server.init_cluster(layout, keys["db_password"])
        pid, port = server.start_postgres(layout, server.LOOPBACK)
        try:
            storage = server.local_database_uri(port, keys["study_password"], server.STUDY_DB,
                                                server.STUDY_USER)
            for _ in range(2):  # the first start after the upgrade, then a restart
                server.create_databases(port, keys["db_password"], keys["study_password"])
                assert connects(storage, server.STUDY_DB)
                assert not any(connects(storage, name) for name in server.DATABASES)
        finally:
            server.stop_postgres(layout.postgres, pid)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_start_says_when_remote_trials_cannot_reach_the_study_database(tmp_path):
    state = {"url": "http://box:5000", "mlflow_pid": 1, "postgres_pid": 2,
             "db_address": "127.0.0.1:5432", "host": "0.0.0.0",
             "study_database": "postgresql+psycopg2://optuna:***@127.0.0.1:5432/optuna"}
    said = server.report_start(tmp_path, state)
    assert "trials on other machines need --db-host" in said
    for served in ({"host": server.LOOPBACK}, {"db_address": "0.0.0.0:5432"}):
        assert "--db-host" not in server.report_start(tmp_path, {**state, **served})


@pytest.mark.parametrize(("args", "message"), [
    (["--port", "70000"], "--port 70000: not a TCP port"),
    (["--backend-store-uri", "mysql://u:secret@db/x"], "--backend-store-uri must be postgresql"),
])
def test_server_refuses_bad_input_in_one_line(tmp_path, capsys, args, message):
    assert server.main(["start", "--dir", str(tmp_path / "s"), *args]) == 1
    error = capsys.readouterr().err
    assert message in error and "secret" not in error and len(error.splitlines()) == 1


def test_server_refuses_a_file_as_dir(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert server.main(["start", "--dir", str(tmp_path / "file"), "--port", "0"]) == 1
    assert "is not a directory" in capsys.readouterr().err


def test_tracking_uri_with_a_password_is_refused():
    with pytest.raises(ConfigError, match="must not contain a password"):
        parse.without_credentials("http://admin:hunter2@127.0.0.1:5000")
    assert parse.without_credentials("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_the_ray_preset_forwards_the_study_storage_and_its_log_hides_the_password(
        monkeypatch, tmp_path):
    import logging

    from style_exp.cluster.launchers import RedactSecrets, worker_env

    storage = "postgresql+psycopg2://optuna:s3cret-pw@db.lan:5432/optuna"
    monkeypatch.setenv(STUDY_STORAGE_ENV, storage)
    assert worker_env(str(tmp_path), ["seed=0,1"], None)[STUDY_STORAGE_ENV] == storage
    record = logging.LogRecord("ray", logging.INFO, __file__, 1, "Initializing ray with "
                               "config: %s", ({"env_vars": {STUDY_STORAGE_ENV: storage}},), None)
    assert RedactSecrets().filter(record)
    assert "s3cret-pw" not in record.getMessage() and "optuna:***@db.lan" in record.getMessage()


def test_launcher_presets_compose_from_the_readme_commands():
    """The README's SLURM command (no SLURM here) and the Ray preset's resource requests."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
        slurm = compose("config", return_hydra_config=True, overrides=[
            "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "resources.gpus=1",
            "resources.cpus=4", "hydra.launcher.timeout_min=240",
            "hydra.launcher.array_parallelism=16", "hydra.launcher.qos=high"]).hydra.launcher
        ray = compose("config", return_hydra_config=True,
                      overrides=["hydra/launcher=ray", "resources.gpus=1"]).hydra.launcher.ray
    assert (slurm.partition, slurm.gpus_per_task, slurm.cpus_per_task) == ("gpu", 1, 4)
    assert (slurm.timeout_min, slurm.array_parallelism, slurm.qos) == (240, 16, "high")
    assert slurm._target_.endswith("SlurmLauncher")
    assert (ray.remote.num_cpus, ray.remote.num_gpus) == (1, 1)
    assert ray.init.object_store_memory is None


def test_threads_follow_the_cpus_slurm_gave(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert resources.allotted_cpus() == 3
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert resources.allotted_cpus() is None


def test_a_search_runs_its_trials_on_ray_against_one_sqlite_study(ray_head, tmp_path, weights):
    """hydra/sweeper=optuna with the Ray launcher: each batch's trials run in Ray workers
    (other processes, another working directory), report to one SQLite study beside the
    store and return their values to the driver, which tells the study."""
    import optuna

    from style_exp.app.study import study_storage

    photo = write_image(tmp_path / "photo.png", gradient_image(40, 56))
    painting = write_image(tmp_path / "painting.jpg", stripes_image(48, 48))
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    env = {**os.environ, **RAY_ENV, "STYLE_EXP_CACHE": str(default_cache_dir()),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = run_sweep(["-m", "hydra/sweeper=optuna", "hydra/launcher=ray",
                      f"hydra.launcher.ray.init.address={ray_head.address}",
                      "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2",
                      "loss.style_weight=tag(log, interval(50, 5000))", f"content={photo}",
                      f"style={painting}", *TINY, f"tracking.uri={uri}",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path, env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    storage = study_storage(None, uri)
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    _, runs = experiment_runs(uri, "style_exp")
    by_trial = {int(run.data.tags["style_exp.trial"]): run for run in runs
                if "style_exp.trial" in run.data.tags}
    assert sorted(by_trial) == [0, 1, 2, 3]
    for trial in study.trials:
        metrics = by_trial[trial.number].data.metrics
        assert trial.values == [pytest.approx(metrics["quality/content_distance"]),
                                pytest.approx(metrics["quality/style_distance"])]


def test_a_search_keeps_its_study_on_the_team_server(client_env, tmp_path, weights):
    """With only client.env's variables (no search.storage), a search's study is created in
    the server's PostgreSQL and its trials' runs on the server name it trial by trial; the
    same command again resumes it (nothing run twice), as does one that gives
    search.storage itself with more trials; no password is shown or recorded."""
    import optuna

    team_server = client_env  # this process reads the server's runs too
    photo = write_image(tmp_path / "photo.png", gradient_image(40, 56))
    painting = write_image(tmp_path / "painting.jpg", stripes_image(48, 48))
    shell = {k: v for k, v in cli_env().items()
             if not k.startswith("MLFLOW_TRACKING_") and k != STUDY_STORAGE_ENV}
    command = ["-m", "hydra/sweeper=optuna", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
               "hydra.sweeper.n_jobs=2", "hydra.sweeper.sampler=random", "hydra.sweeper.seed=0",
               "loss.style_weight=tag(log, interval(50, 5000))", f"content={photo}",
               f"style={painting}", *TINY, "tracking.experiment=search"]
    given = {k: v for k, v in team_server.env.items() if k != STUDY_STORAGE_ENV}
    done = [run_sweep([*command, *args, f"hydra.sweep.dir={tmp_path / f'sweep{index}'}"],
                      tmp_path, {**shell, **env}, timeout=400)
            for index, (args, env) in enumerate([
                (["hydra.sweeper.n_trials=2"], team_server.env),
                (["hydra.sweeper.n_trials=2"], team_server.env),  # the same command again
                (["hydra.sweeper.n_trials=3", f"search.storage={team_server.study_storage}"],
                 given)])]
    for sweep in done:
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        for password in (team_server.password, team_server.study_password):
            assert password not in sweep.stdout + sweep.stderr
    (summary,) = optuna.get_all_study_summaries(team_server.study_storage)
    study = optuna.load_study(study_name=summary.study_name, storage=team_server.study_storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert f"Study {study.study_name}: 2 trials, 2 complete" in done[1].stdout
    assert "optuna:***@" in done[2].stdout
    client, runs = experiment_runs(team_server.url, "search")
    (study_run,) = [r for r in runs if r.data.tags.get("style_exp.kind") == "study"]
    trial_runs = {int(r.data.tags["style_exp.trial"]): r for r in runs
                  if "style_exp.trial" in r.data.tags}
    assert sorted(trial_runs) == [0, 1, 2] and len(runs) == 4
    for trial in study.trials:
        run = trial_runs[trial.number]
        assert run.data.tags["style_exp.study"] == study.study_name
        assert run.data.tags["mlflow.parentRunId"] == study_run.info.run_id
        assert trial.values == [pytest.approx(run.data.metrics["quality/content_distance"]),
                                pytest.approx(run.data.metrics["quality/style_distance"])]
    assert study_run.data.tags["style_exp.study_storage"] == masked(team_server.study_storage)
    for run in runs:
        assert_no_secret_in_run(client, run, team_server, tmp_path)
