"""MLflow tracking: one run per job, metrics from the loop's callback, outcome as status."""

from __future__ import annotations

import contextlib
import functools
import platform
import subprocess
import sys
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import mlflow
import numpy as np
from filelock import FileLock
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.tracking import MlflowClient
from mlflow.tracking.context.registry import resolve_tags

from style_exp.app.outbox import Outbox
from style_exp.app.parse import NO_EFFECT_KEYS
from style_exp.app.runs import heartbeat
from style_exp.app.sweeps import SWEEP_COMMAND_TAG
from style_exp.engine import stopping
from style_exp.engine.images import to_uint8
from style_exp.engine.progress import Progress
from style_exp.spec.errors import RunFailure

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# MLflow's UI opens an experiment of this kind on its runs, not on the GenAI overview.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# MLflow 3.17's UI decides by this URL parameter (or the toggle it remembers) instead.
TRAINING_VIEW = "workflowType=machine_learning"
STOP_WAIT_S = 10.0  # a stopped run waits at most this long for its queued records
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI
RUN_KEY_TAG = "run_key"  # parse.config_key: runs with equal keys make the same result
PROGRESS_IMAGES = "progress"  # image series: the start (step 0) and the checkpoints
OUTPUT_IMAGES = "output"  # image series: the final image, at step 0 in every run
# Config keys logged as params besides those given on the command line: what a
# reviewer compares runs on. The image grid captions each image with every param, so
# the whole config (it is config.yaml) would push the image off the screen.
PARAM_KEYS = ("size", "iterations", "optimizer.name", "init.kind", "loss.style_weight")
# Never params: the inputs are in the run's name and description (paths: reproduce.json).
INPUT_KEYS = ("content", "style")


def experiment_id(tracking_uri: str, name: str) -> str:
    """The experiment's id, creating the store and the experiment when new.

    Several processes of one sweep may reach a fresh SQLite store at the same moment,
    and MLflow's schema creation and migration are not safe against that ("table ...
    already exists", "duplicate column name"), nor is creating the same experiment
    twice. A file lock beside the database makes the first process open the store
    (which creates and migrates it) and the experiment while the others wait; call
    this before anything else touches the store. A server's store cannot be locked from
    here: there the loser of the race (the server answers RESOURCE_ALREADY_EXISTS) takes
    the experiment the winner made.
    """
    database = _sqlite_path(tracking_uri)
    guard = FileLock(f"{database}.lock") if database else contextlib.nullcontext()
    if database:
        database.parent.mkdir(parents=True, exist_ok=True)
    with guard:
        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            location = (database.parent / "artifacts").resolve().as_uri() if database else None
            try:
                return client.create_experiment(name, artifact_location=location,
                                                tags=EXPERIMENT_KIND)
            except MlflowException as error:
                if error.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                    raise
            experiment = client.get_experiment_by_name(name)
        for key, value in EXPERIMENT_KIND.items():
            if experiment.tags.get(key) != value:
                client.set_experiment_tag(experiment.experiment_id, key, value)
        return experiment.experiment_id


def _sqlite_path(tracking_uri: str) -> Path | None:
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith(
        "sqlite:///") else None


@functools.cache  # what this process loaded: the same for each job it runs
def library_versions() -> dict[str, str]:
    """Versions of what decides the result, for the reproduction record."""
    from importlib.metadata import version

    packages = ("tensorflow", "numpy", "scipy", "pillow", "mlflow", "hydra-core", "omegaconf")
    return {"python": platform.python_version(), **{name: version(name) for name in packages}}


def run_params(config: Mapping[str, Any], given: list[str]) -> dict[str, Any]:
    """The params of a run: ``PARAM_KEYS`` and every key given on the command line that
    changes the result (a group given, ``optimizer=lbfgs``, shows as its name in
    ``PARAM_KEYS``); unset ones (``content`` for the demo) are left out."""
    chosen = [key for key in given
              if key.split(".")[0] not in NO_EFFECT_KEYS and key not in INPUT_KEYS]
    return {key: value for key, value in flatten(config).items()
            if value is not None and (key in PARAM_KEYS or key in chosen)}


def dashboard_url(tracking_uri: str, experiment: str, run_id: str | None = None,
                  search: str | None = None) -> str:
    """Where the UI shows a run, or the experiment's runs (filtered by ``search``).

    A local store is served by ``mlflow ui`` at its default address.
    """
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) \
        else LOCAL_UI
    page = f"{base}/#/experiments/{experiment}/runs"
    if run_id:
        return f"{page}/{run_id}?{TRAINING_VIEW}"
    return f"{page}?{TRAINING_VIEW}" + (f"&searchFilter={quote(search)}" if search else "")


def sweep_run_count(tracking_uri: str, experiment: str, sweep: str) -> int:
    """How many runs of the experiment belong to the sweep."""
    return len(MlflowClient(tracking_uri).search_runs(
        [experiment], f"tags.sweep_id = '{sweep}'", max_results=5000))


def finished_run(tracking_uri: str, experiment: str, sweep: str, key: str) -> str | None:
    """The id of a FINISHED run of the sweep with the config key ``key``, if there is one."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id], f"tags.sweep_id = '{sweep}' and tags.{RUN_KEY_TAG} = '{key}' "
        "and attributes.status = 'FINISHED'", max_results=1)
    return runs[0].info.run_id if runs else None


def latest_sweep(tracking_uri: str, experiment: str, command: str) -> str | None:
    """The id of the latest sweep of the experiment run with the command digest ``command``."""
    client = MlflowClient(tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs([found.experiment_id], f"tags.{SWEEP_COMMAND_TAG} = '{command}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].data.tags["sweep_id"] if runs else None


def ui_command(tracking_uri: str) -> str | None:
    """The command that serves a local store's UI; None when the store is a server."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    return f"mlflow ui --backend-store-uri {tracking_uri}"


def log_image(image: np.ndarray, key: str, step: int) -> None:
    """One image of an image series (the UI's image grid shows a key, step by step)."""
    active().log_image(to_uint8(image), key, step)


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config as ``{"loss.style_weight": 500, ...}`` for MLflow params."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@functools.cache  # once per process: its code and device do not change between its jobs
def environment_tags() -> dict[str, str]:
    """TensorFlow version, the device the step runs on, and the code's git commit."""
    import tensorflow as tf

    from style_exp.engine.device import describe_device

    tags = {"tensorflow": tf.__version__, "device": describe_device(),
            "python": platform.python_version()}
    commit = _git(["rev-parse", "HEAD"])
    if commit:
        tags["git_commit"] = commit
        tags["git_dirty"] = str(bool(_git(["status", "--porcelain", "--untracked-files=no"])))
    return tags


def _git(args: list[str]) -> str:
    try:
        result = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return result.stdout.strip() if result.returncode == 0 else ""


_active: list[Outbox] = []  # the tracked run of this process, while it runs


def active() -> Outbox:
    """The running tracked run's records (MLflow's fluent calls, queued while a server is away)."""
    return _active[-1]


@contextlib.contextmanager
def tracked_run(tracking_uri: str, experiment: str, run_name: str | None = None,
                tags: Mapping[str, str] | None = None, queue: Path | None = None,
                outage_wait_s: float = 0.0) -> Iterator[Outbox]:
    """An MLflow run that ends FINISHED, FAILED (with the error recorded) or KILLED.

    A server that stops answering meanwhile does not end it: its records wait in
    ``queue`` (``outbox.py``), and its end waits up to ``outage_wait_s`` for them to
    reach the server (a stopped run: ``STOP_WAIT_S``). What is still queued then is
    named in one line, with the command that sends it: a run that finished then ends
    with that error (exit code 1), a stopped or failed one with its own.
    """
    mlflow.set_tracking_uri(tracking_uri)
    # The experiment first: a client opens (creates, migrates) a new SQLite store, which
    # experiment_id does under its lock so a sweep's parallel jobs do not race to it.
    exp_id = experiment_id(tracking_uri, experiment)
    client = MlflowClient(tracking_uri)
    run = client.create_run(exp_id, run_name=run_name,
                            tags=resolve_tags(dict(tags or {})))
    remote = tracking_uri.startswith(("http://", "https://"))
    outbox = Outbox(client, run.info, queue if remote else None, heartbeat)
    _active.append(outbox)
    try:
        yield outbox
    except BaseException as error:
        if stopping.as_stop(error) is not None:
            outbox.set_tag("outcome", "interrupted")
            _end(outbox, "KILLED", min(outage_wait_s, STOP_WAIT_S))
            raise
        message = f"{type(error).__name__}: {error}"
        outbox.set_tag("error", message[:5000])
        with contextlib.suppress(Exception):
            outbox.log_text("".join(traceback.format_exception(error)), "error.txt")
        _end(outbox, "FAILED", outage_wait_s)
        raise
    else:
        if outbox.end("FINISHED", outage_wait_s):
            raise RunFailure(outbox.undelivered_line(), tracking_uri)
    finally:
        _active.remove(outbox)


def _end(outbox: Outbox, status: str, wait_s: float) -> None:
    """End a stopped or failed run; say where its records are if the store has not all."""
    if outbox.end(status, wait_s):
        print(f"error: {outbox.undelivered_line()}", file=sys.stderr, flush=True)


class MetricsLogger:
    """Loop callback: records each logged step's metrics, and checkpoint images."""

    def __init__(self, outbox: Outbox):
        self.outbox = outbox

    def __call__(self, progress: Progress) -> None:
        self.outbox.log_metrics({key: value for key, value in progress.metrics.items()
                                 if np.isfinite(value)}, progress.step, alive=True)
        if progress.image is not None:
            log_image(progress.image, PROGRESS_IMAGES, progress.step)


def plot_losses(history: list[tuple[int, dict[str, float]]], path: Path) -> Path:
    """A log-scale plot of every loss term (every ``loss/*`` metric) against the step.

    Drawn on a bare ``Figure`` with the axes placed once and the legend in a fixed corner:
    pyplot's figure manager, ``tight_layout``'s extra draw and the legend's search for the
    emptiest spot made it take 1.4x as long, once per run of a sweep."""
    from matplotlib.figure import Figure

    steps = [step for step, _ in history]
    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.add_axes((0.11, 0.12, 0.86, 0.84))
    for name in (name for name in history[-1][1] if name.startswith("loss/")):
        values = np.array([metrics.get(name, np.nan) for _, metrics in history])
        term = name.removeprefix("loss/")
        axes.plot(steps, values, label=term, linewidth=2 if term == "total" else 1)
    axes.set_yscale("log")
    axes.set_xlabel("iteration")
    axes.set_ylabel("loss")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="upper right")
    figure.savefig(path)
    return path
