"""Batches of photos: ``run.py -m 'content=photos/*.jpg'`` runs one job per photo."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from conftest import gradient_image, run_cli, run_sweep, stripes_image, write_image
from hydra.core.override_parser.overrides_parser import OverridesParser
from mlflow.tracking import MlflowClient

from style_exp.app import batches, compare
from style_exp.app.sweeps import command_digest
from style_exp.spec.settings import ConfigError

AWKWARD = ("plain.png", "my photo, (1).png", "it's [x].png", "é=1.png", "back\\slash.png")


def _sweep_values(override: str) -> list[str]:
    """Each job's value, as Hydra's sweepers write the jobs' overrides and parse them."""
    parser = OverridesParser.create()
    return [parser.parse_override(f"content={job}").value()
            for job in parser.parse_override(override).sweep_string_iterator()]


def test_a_glob_becomes_one_sweep_value_per_file_read_back_exactly(tmp_path, monkeypatch):
    """Hydra splits on commas and reads brackets, quotes, spaces and '=' as syntax: each
    path must come back from Hydra's parser as the file's name, in sorted order."""
    for name in AWKWARD:
        (tmp_path / name).touch()
    (tmp_path / "clip").mkdir()  # a folder is a clip, matched like any file
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(batches.TYPED_ENV, "")  # expand sets it for this process
    argv = ["run.py", "-m", "content=*", "seed=0,1"]
    expanded = batches.expand(argv)
    assert expanded[:2] == argv[:2] and expanded[3] == "seed=0,1"
    assert _sweep_values(expanded[2]) == sorted([*AWKWARD, "clip"])
    # The sweep's digest is the command as typed, so a resumed batch finds its sweep even
    # when the folder has gained a photo.
    assert command_digest(expanded[1:]) == command_digest(argv[1:])
    mixed = batches.expand(["run.py", "--multirun", "content=clip,*.png"])
    assert _sweep_values(mixed[2]) == ["clip", *sorted(n for n in AWKWARD)]


def test_paths_that_are_not_globs_are_left_to_hydra(tmp_path, monkeypatch):
    (tmp_path / "star*.png").touch()  # a file whose name merely looks like a glob
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(batches.TYPED_ENV, "")
    argv = ["run.py", "content=star*.png", "style=s.jpg", "content=x.png", "content=[a,b]"]
    assert batches.expand(argv) == argv


def test_a_glob_matching_nothing_or_without_m_is_refused(tmp_path, monkeypatch):
    (tmp_path / "a.png").touch()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="no file matches 'photos/.*jpg'") as error:
        batches.expand(["run.py", "-m", "content=photos/*.jpg"])
    assert error.value.where == "content=photos/*.jpg"
    with pytest.raises(ConfigError, match="a glob matching 1 file is a batch") as error:
        batches.expand(["run.py", "content=*.png"])
    assert error.value.hint == "add -m: python run.py -m 'content=*.png' ..."


def test_a_glob_matching_nothing_is_one_line_before_anything_loads(tmp_path):
    started = time.monotonic()
    done = run_cli(["-m", "content=nowhere/*.jpg", "style=s.jpg"], cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "error: no file matches 'nowhere/*.jpg' (content=nowhere/*.jpg)",
        f"hint: a relative glob is read from {tmp_path}"]
    assert not (tmp_path / "runs").exists()
    assert time.monotonic() - started < 60  # no TensorFlow, no job (generous: shared CPUs)


def test_a_batch_runs_a_job_per_photo_combines_resumes_and_compares(tmp_path: Path) -> None:
    """Two photos (one with a space and a comma in its name) x seed=0,1 in parallel joblib
    jobs: four runs of one sweep, each named by its photo. A photo added to the folder and
    the same command with sweep.resume=true runs only its two jobs into the same sweep;
    compare gives each photo a row and each seed a column."""
    photos = tmp_path / "photos"
    photos.mkdir()
    write_image(photos / "hill, morning.png", gradient_image(40, 48, 1))
    write_image(photos / "lake.png", gradient_image(48, 40, 2))
    painting = write_image(tmp_path / "painting.jpg", stripes_image(48, 48))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = ["-m", "content=photos/*.png", f"style={painting}", "seed=0,1", "size=32",
               "iterations=2", "init=noise", f"tracking.uri={uri}", "progress=false"]
    done = run_sweep([*command, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                      f"hydra.sweep.dir={tmp_path / 'first'}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("style_exp").experiment_id])
    assert sorted(run.info.run_name for run in runs) == [
        f"{photo} x painting · seed={seed}" for photo in ("hill, morning", "lake")
        for seed in (0, 1)]
    (sweep,) = {run.data.tags["sweep_id"] for run in runs}
    assert {run.data.tags["sweep.content"] for run in runs} == {"photos/hill, morning.png",
                                                                 "photos/lake.png"}

    shutil.copy(photos / "lake.png", photos / "pond.png")
    again = run_sweep([*command, "sweep.resume=true", f"hydra.sweep.dir={tmp_path / 'again'}"],
                      cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    summary = next(line for line in again.stdout.splitlines() if line.startswith("Sweep "))
    assert summary == f"Sweep {sweep}: 6 jobs, 2 finished, 4 skipped", again.stdout
    assert again.stdout.count("Run 'pond x painting · seed=") == 4  # 2 started, 2 finished

    rows, columns, cells = compare.grid_layout(
        [compare.Entry(run, {key: compare.swept_value(run, key) for key in ("content", "seed")},
                       None) for run in compare.select_runs(client, "style_exp", sweep)],
        ["content", "seed"])
    assert sorted(rows) == ["hill, morning", "lake", "pond"] and columns == ["0", "1"]
    assert len(cells) == 6
    assert compare.main(["--sweep", sweep, "--tracking-uri", uri,
                         "--out", str(tmp_path / "compare")]) == 0
