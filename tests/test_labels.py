"""Names, descriptions and console summaries: what a reviewer reads first."""

import subprocess
import sys
from pathlib import Path

from conftest import PROJECT

from style_exp.app.console import compare_command, run_summary, sweep_summary
from style_exp.app.labels import run_name, short_keys
from style_exp.app.sweeps import JobOutcome, sweep_id
from style_exp.app.tracking import dashboard_url, run_params, ui_command


def test_run_names_say_what_the_run_is_and_what_differs(parse_config):
    def name(overrides: list[str], swept: dict[str, str] | None = None) -> str:
        return run_name(parse_config(overrides).inputs, swept)

    assert name(["content=/x/tubingen.jpg", "style=/y/starry_night.jpg"]) == \
        "tubingen x starry_night"
    assert name(["content=t.jpg", "style=[a.jpg,b.png]"], {"loss.style_weight": "5000"}) == \
        "t x a+b · style_weight=5000"
    assert name(["demo.styles=2"], {"seed": "1"}) == "grace_hopper x night_swirls+embers · seed=1"
    # a batch of photos sweeps the content: the name starts with the photo already
    assert name(["content=p/lake.jpg", "style=a.jpg"], {"content": "p/lake.jpg", "seed": "1"}) \
        == "lake x a · seed=1"
    # a search samples floats: names carry 4 digits, short values and words stay as typed
    assert name(["content=t.jpg", "style=a.jpg"],
                {"stop.tolerance": "0.02511949870636483", "loss.tv_weight": "1e-05",
                 "optimizer": "adam", "scales": "[128,256]", "seed": "12345678901"}) == \
        "t x a · tolerance=0.02512, tv_weight=1e-05, optimizer=adam, scales=[128,256], " \
        "seed=12345678901"


def test_short_keys_stay_apart_when_their_last_parts_clash():
    assert short_keys(["loss.style_weight", "seed"]) == {"loss.style_weight": "style_weight",
                                                         "seed": "seed"}
    assert short_keys(["a.lr", "b.lr"]) == {"a.lr": "a.lr", "b.lr": "b.lr"}


def test_sweep_id_is_the_directory_made_readable(tmp_path):
    sweep = tmp_path / "2026-01-02" / "10-11-12"
    assert sweep_id(sweep).startswith("2026-01-02_10-11-12-")
    assert sweep_id(sweep) == sweep_id(sweep) != sweep_id(tmp_path / "other" / "10-11-12")


def test_params_are_the_main_keys_and_those_given():
    config = {"content": "/x/t.jpg", "size": 64, "iterations": 9, "seed": 3,
              "optimizer": {"name": "lbfgs", "history_size": 20}, "init": {"kind": "noise"},
              "loss": {"style_weight": 500.0, "tv_weight": 1.0}, "tracking": {"uri": "x"}}
    params = run_params(config, ["content", "seed", "optimizer", "tracking.uri"])
    assert params == {"size": 64, "iterations": 9, "seed": 3, "optimizer.name": "lbfgs",
                      "init.kind": "noise", "loss.style_weight": 500.0}


def test_links_open_the_training_view_of_a_local_store_or_a_server():
    local = "sqlite:////tmp/runs/mlflow.db"
    assert ui_command(local) == f"mlflow ui --backend-store-uri {local}"
    assert dashboard_url(local, "3", "abc") == \
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    server = "http://127.0.0.1:8123/"
    assert ui_command(server) is None
    assert dashboard_url(server, "3", search="tags.sweep_id = 'x'") == (
        "http://127.0.0.1:8123/#/experiments/3/runs?workflowType=machine_learning"
        "&searchFilter=tags.sweep_id%20%3D%20%27x%27")


def test_summaries_name_the_run_or_sweep_and_where_to_look():
    text = run_summary("t x s", "abc", Path("runs/x/output.png"), "content distance 0.5",
                       "http://h/#/r", "mlflow ui --backend-store-uri sqlite:///db")
    assert text.splitlines()[0] == "Run 't x s' finished: content distance 0.5"
    assert "runs/x/output.png" in text and "abc" in text and "then open http://h/#/r" in text
    command = compare_command("S1", "style_exp", None)
    assert command == "python -m style_exp.compare --sweep S1"
    assert compare_command("S1", "other", "http://h") == (
        "python -m style_exp.compare --sweep S1 --experiment other --tracking-uri http://h")
    assert "Sweep S1: 3 runs" in sweep_summary("S1", 3, command, "http://h/#/s", None)


def test_a_sweep_summary_counts_its_jobs_and_names_those_that_did_not_finish():
    outcomes = [JobOutcome(0, ("seed=0",), "finished"),
                JobOutcome(1, ("seed=1",), "failed", 1, "not enough memory (size=4096)"),
                JobOutcome(2, ("seed=2",), "killed", 143, "stopped by SIGTERM after step 3")]
    lines = sweep_summary("S1", 2, "python -m style_exp.compare --sweep S1", "http://h/#/s",
                          None, outcomes).splitlines()
    assert lines[:3] == ["Sweep S1: 3 jobs, 1 finished, 1 failed, 1 killed",
                         "  failed     job 1 (seed=1): not enough memory (size=4096)",
                         "  killed     job 2 (seed=2): stopped by SIGTERM after step 3"]
    finished = sweep_summary("S1", 1, "c", "http://h/#/s", None, outcomes[:1])
    assert finished.splitlines()[0] == "Sweep S1: 1 run"


def test_help_describes_the_main_keys_and_hides_the_schemas():
    done = subprocess.run([sys.executable, str(PROJECT / "run.py"), "optimizer=lbfgs", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "loss.style_weight=W" in done.stdout and "optimizer:  adam, lbfgs*" in done.stdout
    assert "_schema" not in done.stdout and "python -m style_exp.compare" in done.stdout
