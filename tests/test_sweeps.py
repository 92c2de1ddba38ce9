"""Sweeps grouped in MLflow, parallel jobs on one fresh SQLite store, compare, reproduce."""

import os
import subprocess
import sys

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
    assert done.stdout.count("wrote ") == 3
    return root, uri


def test_sweep_jobs_are_grouped_with_their_swept_values(sweep):
    _, uri = sweep
    _, runs = _runs(uri)
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.tags["sweep_id"] for r in runs}) == 1
    assert {r.data.tags["sweep.loss.style_weight"] for r in runs} == {"50", "500", "5000"}
    assert all("sweep.size" not in r.data.tags for r in runs)  # fixed, not swept
    assert {r.data.tags["sweep.job"] for r in runs} == {"1", "2", "3"}  # job 0 had -1


def test_compare_lays_out_the_sweep(sweep, tmp_path):
    _, uri = sweep
    _, runs = _runs(uri)
    sweep_id = runs[0].data.tags["sweep_id"]
    assert compare.main(["--experiment", "style_exp", "--sweep", sweep_id,
                         "--tracking-uri", uri, "--out", str(tmp_path)]) == 0
    sheet = Image.open(tmp_path / "contact_sheet.png")
    # One swept key: 3 columns, 1 row, a header line and a caption line.
    assert sheet.size == (3 * compare.CELL, compare.LABEL_HEIGHT + compare.CELL
                          + compare.LABEL_HEIGHT)
    table = (tmp_path / "summary.md").read_text().splitlines()
    assert "loss.style_weight" in table[0] and len(table) == 2 + 3
    assert [line.split("|")[2].strip() for line in table[2:]] == ["50", "500", "5000"]
    assert (tmp_path / "loss_curves.png").is_file()
    _, after = _runs(uri)
    logged = [r for r in after if r.data.tags.get("style_exp.kind") == "compare"]
    assert len(logged) == 1 and logged[0].data.tags["sweep_id"] == sweep_id


def test_grid_layout_with_two_swept_keys():
    class FakeRun:
        pass

    entries = [compare.Entry(FakeRun(), {"a": a, "b": b}, np.zeros((4, 4, 3), np.uint8))
               for a in ("10", "2") for b in ("x", "y")]
    rows, columns, cells = compare.grid_layout(entries, ["a", "b"])
    assert columns == ["2", "10"] and rows == ["b=x", "b=y"]
    assert all(len(cells[(r, c)]) == 1 for r in rows for c in columns)


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
        assert {"time/total_s", "loss/style", "lr"} <= set(run.data.metrics)


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
