"""`style_exp.reproduce`: a run's record (reproduce.json, config.yaml) and re-running from it.

The recorded run starts from noise with a seed other than the default, so its image
hangs on the seed: "identical" holds only if the reproduction applies what was recorded.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
import mlflow
import numpy as np
import omegaconf
import PIL
import pytest
import scipy
import tensorflow as tf
from conftest import (
    NATIVE_LOG_LINE,
    PROJECT,
    cli_env,
    gradient_image,
    run_cli,
    stripes_image,
    write_image,
)
from mlflow.tracking import MlflowClient
from PIL import Image

from style_exp.app.reproduce import ReproduceError, check_inputs
from style_exp.app.schema import Config
from style_exp.engine.weights import CACHE_NAME, default_cache_dir

SEED = Config().seed + 7  # not the default: a reproduction that drops it starts elsewhere


@dataclass(frozen=True)
class Recorded:
    """The tracked run to reproduce, and where its inputs and store are."""

    run_id: str
    uri: str
    content: Path
    style: Path

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)

    def artifact(self, name: str, into: Path) -> Path:
        return Path(self.client.download_artifacts(self.run_id, name, str(into)))


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Recorded:
    """One tiny deterministic run from seeded noise, on two input files."""
    root = tmp_path_factory.mktemp("reproduce")
    content = write_image(root / "content.png", gradient_image(24, 32))
    style = write_image(root / "style.png", stripes_image(32, 32))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    done = run_cli([f"content={content}", f"style={style}", "size=32", "iterations=4",
                    "init=noise", f"seed={SEED}", "determinism=true", f"tracking.uri={uri}",
                    "progress=false", f"hydra.run.dir={root / 'original'}"], cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    (run,) = MlflowClient(uri).search_runs(
        [MlflowClient(uri).get_experiment_by_name(Config().tracking.experiment).experiment_id])
    return Recorded(run.info.run_id, uri, content, style)


def reproduce(recorded: Recorded, out: Path) -> subprocess.CompletedProcess:
    """``python -m style_exp.reproduce RUN_ID`` as a user types it (from outside the project)."""
    return subprocess.run(
        [sys.executable, "-m", "style_exp.reproduce", recorded.run_id,
         "--tracking-uri", recorded.uri, "--out", str(out)],
        cwd=out.parent, env=cli_env(PYTHONPATH=str(PROJECT)), capture_output=True, text=True,
        timeout=300)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_record_holds_seed_inputs_versions_and_weights_digest(recorded: Recorded,
                                                              tmp_path: Path) -> None:
    """Checked against independent sources: the files' bytes, the modules' own versions and
    the bytes of the weights cache the run loaded (not the functions that wrote the record)."""
    record = json.loads(recorded.artifact("reproduce.json", tmp_path).read_text())
    assert record["seed"] == SEED and record["determinism"] is True
    assert record["inputs"] == {
        name: {"path": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        for name, path in (("content", recorded.content), ("style_0", recorded.style))}
    installed = {"python": platform.python_version(), "tensorflow": tf.__version__,
                 "numpy": np.__version__, "scipy": scipy.__version__, "pillow": PIL.__version__,
                 "mlflow": mlflow.__version__, "hydra-core": hydra.__version__,
                 "omegaconf": omegaconf.__version__}
    assert record["versions"] == installed
    # The cache is one raw float32 vector of every weight: its payload is what the run used.
    cached = np.load(default_cache_dir() / CACHE_NAME, allow_pickle=False)
    assert record["weights_sha256"] == hashlib.sha256(cached.tobytes()).hexdigest()
    tags = recorded.client.get_run(recorded.run_id).data.tags
    assert tags["weights_sha256"] == record["weights_sha256"]
    assert {key.removeprefix("version."): value for key, value in tags.items()
            if key.startswith("version.")} == installed
    assert tags["input_sha256.style_0"] == record["inputs"]["style_0"]["sha256"]


def test_reproduction_is_pixel_identical(recorded: Recorded, tmp_path: Path) -> None:
    done = reproduce(recorded, tmp_path / "again")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert f"identical: {tmp_path / 'again' / 'output.png'} matches run {recorded.run_id}" \
        in done.stdout
    assert not NATIVE_LOG_LINE.search(done.stderr), done.stderr  # quiet, as run.py is
    original = pixels(recorded.artifact("output.png", tmp_path / "original"))
    assert np.array_equal(pixels(tmp_path / "again" / "output.png"), original)
    runs = recorded.client.search_runs(
        [recorded.client.get_run(recorded.run_id).info.experiment_id],
        f"tags.reproduces = '{recorded.run_id}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"  # tracked as a run of its own


def test_reproduction_reports_the_largest_difference(recorded: Recorded, tmp_path: Path) -> None:
    """A recorded image with two pixels off (as if the run had drifted), one by 40 in one
    channel, one by 25 in two: exit 1, two pixels differing by at most 40."""
    saved = recorded.artifact("output.png", tmp_path / "saved")
    image = pixels(saved).copy()
    for (y, x, channel), change in (((3, 5, 1), 40), ((10, 2, 0), 25), ((10, 2, 2), 25)):
        value = int(image[y, x, channel])
        image[y, x, channel] = value + change if value < 128 else value - change
    tampered = tmp_path / "tampered" / "output.png"
    tampered.parent.mkdir()
    Image.fromarray(image).save(tampered)
    recorded.client.log_artifact(recorded.run_id, str(tampered))
    try:
        done = reproduce(recorded, tmp_path / "again")
    finally:
        recorded.client.log_artifact(recorded.run_id, str(saved))
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert (f"different: 2 pixels differ, by at most 40 "
            f"(new image: {tmp_path / 'again' / 'output.png'})") in done.stdout


def test_reproduction_refuses_a_changed_input(recorded: Recorded, tmp_path: Path) -> None:
    """Refused before running, naming the file: no image, no run."""
    experiment = recorded.client.get_run(recorded.run_id).info.experiment_id
    runs = len(recorded.client.search_runs([experiment]))
    before = recorded.style.read_bytes()
    write_image(recorded.style, stripes_image(32, 32)[::-1])
    try:
        done = reproduce(recorded, tmp_path / "refused")
    finally:
        recorded.style.write_bytes(before)
    assert done.returncode == 2, done.stdout + done.stderr[-3000:]
    assert f"refused: input style_0 ({recorded.style.resolve()}) has changed" in done.stderr
    assert not (tmp_path / "refused").exists()
    assert len(recorded.client.search_runs([experiment])) == runs


def test_missing_input_is_refused(tmp_path: Path) -> None:
    record = {"inputs": {"content": {"path": str(tmp_path / "gone.jpg"), "sha256": "0" * 64}}}
    with pytest.raises(ReproduceError, match="gone.jpg"):
        check_inputs(record)
