"""MLflow tracking: one run per job, metrics from the loop's callback, outcome as status."""

from __future__ import annotations

import contextlib
import platform
import subprocess
import time
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from style_exp.images import to_uint8
from style_exp.stylize import Interrupted, Progress

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def default_tracking_uri() -> str:
    """A local SQLite store in ``runs/`` under the working directory."""
    return f"sqlite:///{Path('runs').resolve() / 'mlflow.db'}"


def experiment_id(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The experiment's id, creating it (artifacts beside a SQLite store) when new."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if tracking_uri.startswith("sqlite:///"):
        store_dir = Path(tracking_uri.removeprefix("sqlite:///")).parent
        location = (store_dir / "artifacts").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)


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

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        device = f"GPU: {details.get('device_name', gpus[0].name)}"
    else:
        device = f"CPU: {_cpu_name()}"
    tags = {"tensorflow": tf.__version__, "device": device, "python": platform.python_version()}
    commit = _git(["rev-parse", "HEAD"])
    if commit:
        tags["git_commit"] = commit
        tags["git_dirty"] = str(bool(_git(["status", "--porcelain", "--untracked-files=no"])))
    return tags


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


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
    client = MlflowClient(tracking_uri)
    run = mlflow.start_run(experiment_id=experiment_id(client, experiment, tracking_uri),
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
                   for key, value in progress.metrics.items()]
        self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
        if progress.image is not None:
            mlflow.log_image(to_uint8(progress.image), key="progress", step=progress.step)


def plot_losses(history: list[tuple[int, dict[str, float]]], path: Path) -> Path:
    """A log-scale plot of every loss term against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [step for step, _ in history]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    for term in ("total", "content", "style", "tv"):
        values = np.array([metrics[f"loss/{term}"] for _, metrics in history])
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
