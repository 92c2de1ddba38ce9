"""MLflow tracking: one run per job, metrics from the loop's callback, outcome as status."""

from __future__ import annotations

import contextlib
import hashlib
import platform
import subprocess
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from filelock import FileLock
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from style_exp.images import to_uint8
from style_exp.runs import heartbeat
from style_exp.stylize import Interrupted, Progress

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def experiment_id(tracking_uri: str, name: str) -> str:
    """The experiment's id, creating the store and the experiment when new.

    Several processes of one sweep may reach a fresh SQLite store at the same moment,
    and MLflow's schema creation and migration are not safe against that ("table ...
    already exists", "duplicate column name"), nor is creating the same experiment
    twice. A file lock beside the database makes the first process open the store
    (which creates and migrates it) and the experiment while the others wait; call
    this before anything else touches the store.
    """
    database = _sqlite_path(tracking_uri)
    guard = FileLock(f"{database}.lock") if database else contextlib.nullcontext()
    if database:
        database.parent.mkdir(parents=True, exist_ok=True)
    with guard:
        client = MlflowClient(tracking_uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = (database.parent / "artifacts").resolve().as_uri() if database else None
        return client.create_experiment(name, artifact_location=location)


def _sqlite_path(tracking_uri: str) -> Path | None:
    return Path(tracking_uri.removeprefix("sqlite:///")) if tracking_uri.startswith(
        "sqlite:///") else None


def library_versions() -> dict[str, str]:
    """Versions of what decides the result, for the reproduction record."""
    from importlib.metadata import version

    packages = ("tensorflow", "numpy", "scipy", "pillow", "mlflow", "hydra-core", "omegaconf")
    return {"python": platform.python_version(), **{name: version(name) for name in packages}}


def sweep_tags(sweep_dir: Path, job_number: int, job_overrides: list[str]) -> dict[str, str]:
    """Tags that group one sweep's runs and carry each run's swept values.

    The sweep id comes from Hydra's sweep directory, which every job of a sweep
    shares whatever the launcher (separate processes included). The swept keys are
    those the sweep's command line gave several values, read back from the
    ``multirun.yaml`` Hydra writes there before the first job starts.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    resolved = sweep_dir.resolve()
    sweep_id = f"{resolved.parent.name}_{resolved.name}-" + hashlib.sha1(
        str(resolved).encode()).hexdigest()[:6]
    tags = {"sweep_id": sweep_id, "sweep.job": str(job_number)}
    multirun = sweep_dir / "multirun.yaml"
    swept: set[str] = set()
    if multirun.is_file():
        command_line = list(OmegaConf.load(multirun).hydra.overrides.task)
        parser = OverridesParser.create()
        swept = {o.key_or_group for o in parser.parse_overrides(command_line)
                 if o.is_sweep_override()}
        sweeper_params = OmegaConf.load(multirun).hydra.sweeper.get("params") or {}
        swept |= set(sweeper_params)
    for override in job_overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") in swept:
            tags[f"sweep.{key.lstrip('+~')}"] = value
    return tags


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


def environment_tags() -> dict[str, str]:
    """TensorFlow version, the device the step runs on, and the code's git commit."""
    import tensorflow as tf

    from style_exp.device import describe

    tags = {"tensorflow": tf.__version__, "device": describe(), "python": platform.python_version()}
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


@contextlib.contextmanager
def tracked_run(tracking_uri: str, experiment: str, run_name: str | None = None,
                tags: Mapping[str, str] | None = None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run that ends FINISHED, FAILED (with the error recorded) or KILLED."""
    mlflow.set_tracking_uri(tracking_uri)
    run = mlflow.start_run(experiment_id=experiment_id(tracking_uri, experiment),
                           run_name=run_name, tags=dict(tags or {}))
    try:
        yield run
    except (Interrupted, KeyboardInterrupt):
        mlflow.set_tag("outcome", "interrupted")
        mlflow.end_run(status="KILLED")
        raise
    except BaseException as error:
        message = f"{type(error).__name__}: {error}"
        mlflow.set_tag("error", message[:5000])
        with contextlib.suppress(Exception):
            mlflow.log_text("".join(traceback.format_exception(error)), "error.txt")
        mlflow.end_run(status="FAILED")
        raise
    else:
        mlflow.end_run(status="FINISHED")


class MetricsLogger:
    """Loop callback: sends each logged step's metrics, and checkpoint images, to MLflow."""

    def __init__(self, run_id: str, tracking_uri: str):
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri)

    def __call__(self, progress: Progress) -> None:
        timestamp = int(1000 * time.time())
        metrics = [Metric(key, value, timestamp, progress.step)
                   for key, value in progress.metrics.items() if np.isfinite(value)]
        self.client.log_batch(self.run_id, metrics=metrics, tags=[heartbeat()],
                              synchronous=True)
        if progress.image is not None:
            mlflow.log_image(to_uint8(progress.image), key="progress", step=progress.step)


def plot_losses(history: list[tuple[int, dict[str, float]]], path: Path) -> Path:
    """A log-scale plot of every loss term (every ``loss/*`` metric) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [step for step, _ in history]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    for name in (name for name in history[-1][1] if name.startswith("loss/")):
        values = np.array([metrics.get(name, np.nan) for _, metrics in history])
        term = name.removeprefix("loss/")
        axes.plot(steps, values, label=term, linewidth=2 if term == "total" else 1)
    axes.set_yscale("log")
    axes.set_xlabel("iteration")
    axes.set_ylabel("loss")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
