"""Sweeps grouped in MLflow, presets, parallel jobs on one fresh SQLite store, compare."""

from __future__ import annotations

import csv
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from conftest import EXIT_AFTER_SUMMARY_S, PROJECT, cli_env, run_sweep, stripes_image
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from PIL import Image

from style_exp.app import compare


def _runs(uri: str, experiment: str = "style_exp") -> tuple[MlflowClient, list[Run]]:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id]) if found else []


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A tiny sweep of the style weight, run once through `run.py -m`: 3 jobs, and one with a
    bad value that fails alone, before any run exists, while the others go on."""
    root = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{root / 'store' / 'mlflow.db'}"
    done = run_sweep(["-m", "loss.style_weight=-1,50,500,5000", "size=32", "iterations=3",
                      "tracking.log_every=1", f"tracking.uri={uri}",
                      f"hydra.sweep.dir={root / 'sweep'}", "progress=false"], cwd=root)
    assert done.returncode == 2, done.stderr[-3000:]  # the failed job's: a usage error
    assert done.after_summary_s < EXIT_AFTER_SUMMARY_S  # the basic launcher exits at once
    assert "error: must be non-negative, got -1.0 (loss.style_weight)" in done.stderr
    assert done.stdout.count("' finished") == 3
    (root / "stdout.txt").write_text(done.stdout)
    return root, uri


def test_a_sweep_with_a_failed_job_still_ends_with_its_summary(sweep):
    """Hydra skips its end-of-sweep callback after a failed job: the summary must still come,
    after every job, counting the jobs and naming the failed one by its swept value."""
    root, uri = sweep
    _, runs = _runs(uri)
    (sweep_id,) = {run.data.tags["sweep_id"] for run in runs}
    lines = (root / "stdout.txt").read_text().splitlines()
    start = lines.index(f"Sweep {sweep_id}: 4 jobs, 3 finished, 1 failed")
    assert sum("' finished" in line for line in lines[:start]) == 3
    assert lines[start + 1] == ("  failed     job 0 (loss.style_weight=-1): "
                                "must be non-negative, got -1.0 (loss.style_weight)")
    assert lines[start + 2].split()[:4] == ["compare", "python", "-m", "style_exp.compare"]


def test_sweep_jobs_are_grouped_with_their_swept_values(sweep):
    _, uri = sweep
    _, runs = _runs(uri)
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1
    assert {r.data.tags["sweep.loss.style_weight"] for r in runs} == {"50", "500", "5000"}
    assert all("sweep.size" not in r.data.tags for r in runs)  # fixed, not swept
    assert {r.data.tags["sweep.job"] for r in runs} == {"1", "2", "3"}  # job 0 had -1


def test_sweep_runs_are_named_described_measured_and_imaged(sweep):
    _, uri = sweep
    client, runs = _runs(uri)
    names = {r.info.run_name for r in runs}
    assert names == {f"grace_hopper x night_swirls · style_weight={w}" for w in (50, 500, 5000)}
    experiment = client.get_experiment(runs[0].info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for run in runs:
        note = run.data.tags["mlflow.note.content"]
        assert "grace_hopper" in note and "lbfgs" in note and "content distance" in note
        assert 0 < run.data.metrics["quality/content_distance"] < 5
        assert 0 < run.data.metrics["quality/style_distance"] < 5
        assert "loss.style_weight" in run.data.params and "tracking.uri" not in run.data.params
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
        assert any(p.startswith("images/output+step+0+") for p in images)
        assert any(p.startswith("images/progress+step+0+") for p in images)


def test_sweep_jobs_print_their_runs(sweep):
    """Each job prints its run; the sweep's own summary (its id and the compare command)
    comes when every job succeeded (here one fails; see the preset test below)."""
    root, _ = sweep
    printed = (root / "stdout.txt").read_text()
    assert "Run 'grace_hopper x night_swirls · style_weight=500' finished" in printed
    assert "mlflow ui --backend-store-uri sqlite:///" in printed
    assert "workflowType=machine_learning" in printed
    assert (root / "sweep" / "1" / "run.log").read_text().strip()  # job 0 had -1


def test_compare_lays_out_the_sweep(sweep, tmp_path: Path) -> None:
    """One cell per run, in the swept key's order, each showing that run's own image; the
    CSV table has one row per run with its swept value and its MLflow metrics."""
    _, uri = sweep
    client, runs = _runs(uri)
    sweep_id = runs[0].data.tags["sweep_id"]
    tracking_before = mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")
    assert compare.main(["--experiment", "style_exp", "--sweep", sweep_id,
                         "--tracking-uri", uri, "--out", str(tmp_path)]) == 0
    # The compare run is logged through a client: the process (and its children) still
    # track where they did, not into the compared store.
    assert (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI")) == tracking_before
    by_weight = sorted(runs, key=lambda r: float(r.data.tags["sweep.loss.style_weight"]))
    sheet = np.asarray(Image.open(tmp_path / "contact_sheet.png").convert("RGB"))
    # One swept key: the inputs on top, then one row of 3 columns, CELL px apart; each image
    # (smaller than a cell, so pasted as is) sits at the top of its cell, captions below.
    assert sheet.shape[1] == 3 * compare.CELL
    for column, run in enumerate(by_weight):
        image = np.asarray(Image.open(client.download_artifacts(
            run.info.run_id, "output.png", str(tmp_path / run.info.run_id))).convert("RGB"))
        height, width = image.shape[:2]
        top = sheet.shape[0] - (height + compare.MARGIN + 2 * compare.LINE)
        left = column * compare.CELL
        assert np.array_equal(sheet[top:top + height, left:left + width], image), run.info.run_name
    with open(tmp_path / "summary.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    oldest_first = sorted(runs, key=lambda r: r.info.start_time)
    assert [row["run_id"] for row in table] == [r.info.run_id for r in oldest_first]
    assert sorted(row["loss.style_weight"] for row in table) == ["50", "500", "5000"]
    for row, run in zip(table, oldest_first, strict=True):
        assert row["loss.style_weight"] == run.data.tags["sweep.loss.style_weight"]
        for metric in ("quality/content_distance", "quality/style_distance", "loss/total",
                       "time/total_s"):
            assert float(row[metric]) == run.data.metrics[metric], metric
    markdown = (tmp_path / "summary.md").read_text().splitlines()
    header = next(line for line in markdown if line.startswith("| run |"))
    assert "loss.style_weight" in header and "quality/content_distance" in header
    assert (tmp_path / "loss_curves.png").is_file() and (tmp_path / "tradeoff.png").is_file()
    _, after = _runs(uri)
    logged = [r for r in after if r.data.tags.get("style_exp.kind") == "compare"]
    assert len(logged) == 1 and logged[0].data.tags["compared_sweep_id"] == sweep_id
    assert "sweep_id" not in logged[0].data.tags  # never counted as a member of the sweep
    assert len(compare.select_runs(MlflowClient(uri), "style_exp", sweep_id)) == 3


def test_compare_names_the_runs_it_leaves_out(tmp_path: Path, capsys) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("few", artifact_location=(tmp_path / "a").as_uri())
    image = tmp_path / "output.png"
    Image.fromarray(stripes_image(40, 30).astype(np.uint8)).save(image)
    for name, artifact in (("with image", image), ("without image", None)):
        run = client.create_run(experiment, run_name=name)
        if artifact:
            client.log_artifact(run.info.run_id, str(artifact))
        client.set_terminated(run.info.run_id)
    assert compare.main(["--experiment", "few", "--tracking-uri", uri,
                         "--out", str(tmp_path / "out")]) == 0
    assert "left out: without image" in capsys.readouterr().err
    assert "without image" in (tmp_path / "out" / "summary.md").read_text()


def test_runs_with_equal_values_each_get_a_cell():
    class FakeRun:
        info = type("Info", (), {"run_name": "r", "run_id": "0" * 32})()

    entries = [compare.Entry(FakeRun(), {"a": a}, np.zeros((4, 4, 3), np.uint8))
               for a in ("1", "1", "2")]
    rows, columns, cells = compare.grid_layout(entries, ["a"])
    assert columns == ["1", "2"] and rows == ["", "#2"]
    assert len(cells) == 3


def test_an_experiments_pairs_each_get_rows_named_by_the_pair():
    """Sweeps of one setting over several photo/painting pairs: a row per pair, by name."""
    def entry(name: str, a: str) -> compare.Entry:
        run = type("Run", (), {"info": type("Info", (), {"run_name": name,
                                                         "run_id": "0" * 32})()})()
        return compare.Entry(run, {"a": a}, np.zeros((4, 4, 3), np.uint8))

    entries = [entry(f"{pair} · a={a}", a) for pair in ("stata x dora_maar", "t x s+n")
               for a in ("1", "2")] + [entry("t x s+n · a=1", "1")]
    rows, columns, cells = compare.grid_layout(entries, ["a"])
    assert rows == ["stata x dora_maar", "t x s+n", "t x s+n #2"] and columns == ["1", "2"]
    assert cells[("t x s+n", "2")] is entries[3]
    assert compare.input_label("content", "t x s+n") == "photo t"
    assert compare.input_label("style_1", "t x s+n") == "style 2 n"
    assert compare.input_label("style_2", "t x s+n") == "style 3"


def test_compare_says_clearly_when_nothing_matches(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    assert compare.main(["--experiment", "nothing", "--tracking-uri", uri,
                         "--out", str(tmp_path / "out")]) == 2
    assert "no experiment named 'nothing'" in capsys.readouterr().err


def test_a_preset_sweeps_in_parallel_jobs_on_a_fresh_sqlite_store(tmp_path: Path) -> None:
    """``experiment=pooling`` run by joblib: its 2 jobs in 2 processes that create one fresh
    SQLite store together; once both are done the launching process prints the sweep's id
    and a compare command that works."""
    store = tmp_path / "fresh" / "mlflow.db"
    uri = f"sqlite:///{store}"
    done = run_sweep(["-m", "experiment=pooling", "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=2", "size=32", "iterations=4", "tracking.log_every=1",
                      f"tracking.uri={uri}", "progress=false",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    # loky's idle workers once kept the launching process for 300 s after its summary
    assert done.after_summary_s < EXIT_AFTER_SUMMARY_S
    client, runs = _runs(uri)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    pooling = {r.data.tags["sweep.model.pooling"]: r for r in runs}
    assert set(pooling) == {"max", "avg"}
    assert {r.data.tags["sweep.job"] for r in runs} == {"0", "1"}
    # The preset's value reached the network: other pooling, other loss.
    assert pooling["max"].data.metrics["loss/total"] != pooling["avg"].data.metrics["loss/total"]
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "loss/total")
        assert [m.step for m in history] == [1, 2, 3, 4]
        assert {"time/total_s", "loss/style", "lbfgs/evaluations"} <= set(run.data.metrics)

    (sweep_id,) = {r.data.tags["sweep_id"] for r in runs}
    lines = done.stdout.splitlines()
    start = lines.index(f"Sweep {sweep_id}: 2 runs")
    assert sum("' finished" in line for line in lines[:start]) == 2  # after both jobs' runs
    command = f"python -m style_exp.compare --sweep {sweep_id} --tracking-uri {uri}"
    assert lines[start + 1].split() == ["compare", *command.split()]
    arguments = shlex.split(command)[3:]
    assert compare.main([*arguments, "--out", str(tmp_path / "compare")]) == 0
    assert (tmp_path / "compare" / "contact_sheet.png").is_file()


def test_a_killed_sweep_resumes_where_it_stopped(tmp_path: Path) -> None:
    """SIGKILL after two of five jobs; the same command with ``sweep.resume=true`` runs
    exactly the three without a FINISHED run (the one killed mid-way included) into the
    same sweep, and compare shows five runs."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    command = ["-m", "seed=0,1,2,3,4", "size=32", "iterations=3", f"tracking.uri={uri}",
               "progress=false"]
    first = subprocess.Popen([sys.executable, str(PROJECT / "run.py"), *command,
                              f"hydra.sweep.dir={tmp_path / 'first'}"], cwd=tmp_path,
                             env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, start_new_session=True)
    finished = 0
    for line in first.stdout:
        finished += "' finished" in line
        if finished == 2:
            break
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    done = run_sweep([*command, f"hydra.sweep.dir={tmp_path / 'again'}", "sweep.resume=true"],
                     cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("' finished") == 3, done.stdout
    assert done.stdout.count("skipped: its sweep has it finished already") == 2
    _, runs = _runs(uri)
    (sweep,) = {run.data.tags["sweep_id"] for run in runs}  # the new runs joined the sweep
    assert f"Resuming sweep {sweep}: its finished jobs are skipped" in done.stdout
    assert f"Sweep {sweep}: 5 jobs, 3 finished, 2 skipped" in done.stdout
    assert sorted(run.data.tags["sweep.seed"] for run in runs
                  if run.info.status == "FINISHED") == ["0", "1", "2", "3", "4"]
    assert compare.main(["--sweep", sweep, "--tracking-uri", uri,
                         "--out", str(tmp_path / "compare")]) == 0
    assert (tmp_path / "compare" / "summary.md").read_text().startswith("5 runs.")


def test_resuming_a_sweep_that_is_not_there_is_refused(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = run_sweep(["-m", "seed=0,1", "size=32", "iterations=3", f"tracking.uri={uri}",
                      "progress=false", "sweep.resume=2026-01-01_00-00-00-abcdef",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: no runs of sweep 2026-01-01_00-00-00-abcdef in experiment 'style_exp' "
        "(sweep.resume)"]
    assert "' finished" not in done.stdout
