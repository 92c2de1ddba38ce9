"""Sweeps grouped in MLflow, parallel jobs on one fresh SQLite store, compare, reproduce."""

import os
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from conftest import PROJECT, gradient_image, stripes_image
from mlflow.tracking import MlflowClient
from PIL import Image

from style_exp import compare
from style_exp.reproduce import ReproduceError, check_inputs

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _cli(args, cwd, timeout=600):
    done = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=timeout)
    return done


def _runs(uri, experiment="style_exp"):
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    return client, client.search_runs([found.experiment_id]) if found else []


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A tiny sweep of the style weight, run once through `run.py -m`: 3 jobs, and one with a
    bad value that fails alone, before any run exists, while the others go on."""
    root = tmp_path_factory.mktemp("sweep")
    uri = f"sqlite:///{root / 'store' / 'mlflow.db'}"
    done = _cli([str(PROJECT / "run.py"), "-m", "loss.style_weight=-1,50,500,5000", "size=32",
                 "iterations=3", "tracking.log_every=1", f"tracking.uri={uri}",
                 f"hydra.sweep.dir={root / 'sweep'}", "progress=false"], cwd=root)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error: must be non-negative, got -1.0 (loss.style_weight)" in done.stderr
    assert done.stdout.count("' finished") == 3
    (root / "stdout.txt").write_text(done.stdout)
    return root, uri


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
    comes when every job succeeded, which tests/test_dashboard.py checks (here one fails)."""
    root, _ = sweep
    printed = (root / "stdout.txt").read_text()
    assert "Run 'grace_hopper x night_swirls · style_weight=500' finished" in printed
    assert "mlflow ui --backend-store-uri sqlite:///" in printed
    assert "workflowType=machine_learning" in printed
    assert (root / "sweep" / "1" / "run.log").read_text().strip()  # job 0 had -1


def test_compare_lays_out_the_sweep(sweep, tmp_path):
    _, uri = sweep
    _, runs = _runs(uri)
    sweep_id = runs[0].data.tags["sweep_id"]
    assert compare.main(["--experiment", "style_exp", "--sweep", sweep_id,
                         "--tracking-uri", uri, "--out", str(tmp_path)]) == 0
    sheet = Image.open(tmp_path / "contact_sheet.png")
    # One swept key: the inputs (photo, painting) on top, then 3 columns in one row.
    assert sheet.width == 3 * compare.CELL and sheet.height > compare.CELL // 2
    table = (tmp_path / "summary.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| run |"))
    assert "loss.style_weight" in header and "quality/content_distance" in header
    rows = [line for line in table if "grace_hopper x night_swirls" in line]
    assert [line.split("|")[3].strip() for line in rows] == ["50", "500", "5000"]
    assert (tmp_path / "loss_curves.png").is_file() and (tmp_path / "tradeoff.png").is_file()
    _, after = _runs(uri)
    logged = [r for r in after if r.data.tags.get("style_exp.kind") == "compare"]
    assert len(logged) == 1 and logged[0].data.tags["compared_sweep_id"] == sweep_id
    assert "sweep_id" not in logged[0].data.tags  # never counted as a member of the sweep
    assert len(compare.select_runs(MlflowClient(uri), "style_exp", sweep_id)) == 3


def test_compare_names_the_runs_it_leaves_out(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.create_experiment("few", artifact_location=(tmp_path / "a").as_uri())
    image = tmp_path / "output.png"
    Image.fromarray(stripes_image(40, 30).astype(np.uint8)).save(image)
    with mlflow.start_run(experiment_id=experiment, run_name="with image"):
        mlflow.log_artifact(str(image))
    with mlflow.start_run(experiment_id=experiment, run_name="without image"):
        pass
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


def test_compare_says_clearly_when_nothing_matches(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'empty.db'}"
    assert compare.main(["--experiment", "nothing", "--tracking-uri", uri,
                         "--out", str(tmp_path / "out")]) == 2
    assert "no experiment named 'nothing'" in capsys.readouterr().err


def test_parallel_joblib_jobs_share_a_fresh_sqlite_store(tmp_path):
    store = tmp_path / "fresh" / "mlflow.db"
    uri = f"sqlite:///{store}"
    done = _cli([str(PROJECT / "run.py"), "-m", "hydra/launcher=joblib",
                 "hydra.launcher.n_jobs=4", "seed=0,1,2,3", "size=32", "iterations=4",
                 "tracking.log_every=1", f"tracking.uri={uri}", "progress=false",
                 f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client, runs = _runs(uri)
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "loss/total")
        assert [m.step for m in history] == [1, 2, 3, 4]
        assert {"time/total_s", "loss/style", "lbfgs/evaluations"} <= set(run.data.metrics)


def test_reproduce_is_pixel_identical_and_refuses_changed_inputs(tmp_path):
    content, style = tmp_path / "content.png", tmp_path / "style.png"
    Image.fromarray(gradient_image(40, 48).astype(np.uint8)).save(content)
    Image.fromarray(stripes_image(48, 48).astype(np.uint8)).save(style)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = _cli([str(PROJECT / "run.py"), f"content={content}", f"style={style}", "size=48",
                 "iterations=6", "determinism=true", f"tracking.uri={uri}", "progress=false",
                 f"hydra.run.dir={tmp_path / 'original'}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    client, (original,) = _runs(uri)
    record_inputs = client.get_run(original.info.run_id).data.tags
    assert len(record_inputs["input_sha256.content"]) == 64

    again = _cli(["-m", "style_exp.reproduce", original.info.run_id, "--tracking-uri", uri,
                  "--out", str(tmp_path / "again")], cwd=PROJECT)
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    assert "identical" in again.stdout

    Image.fromarray(stripes_image(48, 48)[::-1].astype(np.uint8)).save(style)
    refused = _cli(["-m", "style_exp.reproduce", original.info.run_id, "--tracking-uri", uri,
                    "--out", str(tmp_path / "refused")], cwd=PROJECT)
    assert refused.returncode == 2
    assert f"input style_0 ({style}) has changed" in refused.stderr
    assert not (tmp_path / "refused" / "output.png").exists()


def test_missing_input_is_refused(tmp_path):
    record = {"inputs": {"content": {"path": str(tmp_path / "gone.jpg"), "sha256": "0" * 64}}}
    with pytest.raises(ReproduceError, match="gone.jpg"):
        check_inputs(record)
