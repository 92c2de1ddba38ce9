"""Optuna searches (hydra/sweeper=optuna): the plugin's grammar, the presets, trials told
FAIL, PRUNED or their (mean) values, and a study killed part-way and resumed."""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import PROJECT, cli_env, compose_config, parse, run_sweep, store_uri  # noqa: F401
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from mlflow.tracking import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from style_exp.app import compare
from style_exp.app.pareto import non_dominated
from style_exp.app.search import distribution, search_space, trial_overrides
from style_exp.app.study import STORAGE_FILE, study_storage
from style_exp.spec.search import STUDY_STORAGE_ENV, masked
from style_exp.spec.settings import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _distribution(line: str):
    return distribution(OverridesParser.create().parse_override(line))


def test_the_plugins_override_grammar_becomes_optunas_distributions():
    assert _distribution("a=interval(1, 5)") == FloatDistribution(1, 5)  # Hydra's: floats
    assert _distribution("a=int(interval(1, 5))") == IntDistribution(1, 5)
    assert _distribution("a=tag(log, interval(50, 5000))") == FloatDistribution(
        50, 5000, log=True)
    assert _distribution("a=tag(log, int(interval(50, 5000)))") == IntDistribution(
        50, 5000, log=True)
    assert _distribution("a=choice(adam, lbfgs)") == CategoricalDistribution(["adam", "lbfgs"])
    assert _distribution("a=1,2,4") == CategoricalDistribution([1, 2, 4])
    # Hydra's range() leaves its stop out, so the trials do too
    assert _distribution("a=range(1, 9, 2)") == IntDistribution(1, 7, step=2)
    assert _distribution("a=choice([relu4_2], [relu3_2])") == CategoricalDistribution(
        ["[relu4_2]", "[relu3_2]"])


def test_the_command_line_wins_over_the_presets_params_and_the_rest_goes_to_every_trial():
    space, fixed = search_space(["loss.style_weight=interval(1.0, 2.0)", "size=64"],
                                {"loss.style_weight": "interval(10.0, 20.0)",
                                 "loss.tv_weight": "choice(1, 2)"})
    assert space == {"loss.style_weight": FloatDistribution(1, 2),
                     "loss.tv_weight": CategoricalDistribution([1, 2])}
    assert fixed == ["size=64"]


def test_the_study_lives_where_it_is_told_else_where_the_runs_live():
    """search.storage > beside a SQLite store > $STYLE_EXP_STUDY_STORAGE (client.env) for
    a server: runs kept locally with client.env sourced keep a local study."""
    sqlite, server = "sqlite:////data/runs/mlflow.db", "http://127.0.0.1:5000"
    team = {STUDY_STORAGE_ENV: "postgresql+psycopg2://optuna:pw@10.0.0.1:5432/optuna"}
    given = "postgresql+psycopg2://u@h/optuna"
    assert study_storage(None, sqlite, {}) == f"sqlite:////data/runs/{STORAGE_FILE}"
    assert study_storage(given, server, {}) == given
    assert study_storage(given, server, team) == given
    assert study_storage(None, server, team) == team[STUDY_STORAGE_ENV]
    assert study_storage(None, sqlite, team) == f"sqlite:////data/runs/{STORAGE_FILE}"
    assert study_storage(None, sqlite, {STUDY_STORAGE_ENV: ""}).endswith(STORAGE_FILE)


def test_a_search_on_a_server_without_a_study_database_stops_in_one_line(tmp_path):
    """Before any run, and saying both ways to give the study a database."""
    with pytest.raises(ConfigError, match="search.storage") as error:
        study_storage(None, "http://127.0.0.1:5000", {})
    assert STUDY_STORAGE_ENV in str(error.value)
    done = subprocess.run(
        [sys.executable, str(PROJECT / "run.py"), *_search(tmp_path, "http://127.0.0.1:9"),
         "loss.style_weight=interval(50, 5000)"], cwd=tmp_path, capture_output=True,
        text=True, timeout=120, env={k: v for k, v in cli_env().items()
                                     if k != STUDY_STORAGE_ENV})
    assert done.returncode == 2, done.stderr[-2000:]
    first = done.stderr.splitlines()[0]
    assert first.startswith("error: the tracking store http://127.0.0.1:9 is not a local "
                            "SQLite file") and STUDY_STORAGE_ENV in first, done.stderr
    assert "search.storage" in first and not (tmp_path / "runs" / "multirun").exists()


def test_a_password_in_a_study_uri_is_masked():
    assert masked("postgresql+psycopg2://optuna:s3cr-t_@db.lan:5432/optuna?sslmode=require") \
        == "postgresql+psycopg2://optuna:***@db.lan:5432/optuna?sslmode=require"
    for plain in ("sqlite:////runs/optuna.db", "postgresql://optuna@db/optuna"):
        assert masked(plain) == plain


@pytest.mark.parametrize("preset", sorted(
    path.stem for path in (PROJECT / "conf" / "search").glob("*.yaml")))
def test_each_presets_trials_compose_and_parse(preset):
    """``compose()`` leaves ``hydra.sweeper.params`` alone: sample trials from each preset's
    space and parse each as its job would be."""
    command = [f"search={preset}", "size=256"]
    with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
        sweeper = compose(config_name="config", overrides=command,
                          return_hydra_config=True).hydra.sweeper
    assert sweeper._target_.startswith("hydra_plugins.")
    space, fixed = search_space(command, dict(sweeper.params))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    specs = []
    for _ in range(4):
        job = [*fixed, *trial_overrides(study.ask(space).params)]
        with initialize_config_dir(config_dir=str(PROJECT / "conf"), version_base="1.3"):
            specs.append(parse(compose(config_name="config", overrides=job), job))
    assert len({repr(spec) for spec in specs}) == len(specs)  # the values reached the runs


def _search(root: Path, uri: str, *args: str) -> list[str]:
    photo, painting = root / "photo.png", root / "painting.jpg"
    if not photo.exists():
        from conftest import gradient_image, stripes_image, write_image

        write_image(photo, gradient_image(40, 56))
        write_image(painting, stripes_image(48, 48))
    return ["-m", "hydra/sweeper=optuna", f"content={photo}", f"style={painting}", "size=32",
            "progress=false", f"tracking.uri={uri}", "hydra.sweeper.sampler=random",
            "hydra.sweeper.seed=0", *args]


def _study(uri: str) -> optuna.Study:
    storage = study_storage(None, uri)
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


def _trial_runs(uri: str) -> dict[int, list]:
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("style_exp").experiment_id])
    by_trial: dict[int, list] = {}
    for run in runs:
        if "style_exp.trial" in run.data.tags:
            by_trial.setdefault(int(run.data.tags["style_exp.trial"]), []).append(run)
    return by_trial


def test_failed_trials_are_failed_and_repeats_tell_their_mean(tmp_path):
    """A trial whose value is refused is FAIL, the study goes on; each other trial runs one
    run per seed and is told their mean; the summary names the best runs' reproduce
    commands."""
    uri = store_uri(tmp_path)
    done = run_sweep(_search(tmp_path, uri, "iterations=4", "loss.tv_weight=choice(-5, 10)",
                             "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2",
                             "search.repeats=2", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                             "hydra.sweeper.objectives=[quality/style_distance]",
                             "hydra.sweeper.direction=minimize"), cwd=tmp_path)
    assert done.returncode == 2, done.stderr[-3000:]  # the refused jobs' usage error
    study, runs = _study(uri), _trial_runs(uri)
    states = {t.number: (t.state.name, t.params["loss.tv_weight"]) for t in study.trials}
    assert states == {0: ("COMPLETE", 10), 1: ("FAIL", -5), 2: ("COMPLETE", 10)}
    assert 1 not in runs  # refused before a run was made
    for number in (0, 2):
        trial_runs = runs[number]
        assert sorted(run.data.params["seed"] for run in trial_runs) == ["0", "1"]
        mean = sum(run.data.metrics["quality/style_distance"] for run in trial_runs) / 2
        assert study.trials[number].values == [pytest.approx(mean)]
        assert {run.info.status for run in trial_runs} == {"FINISHED"}
    assert "Study search-" in done.stdout and "3 trials, 2 complete, 1 fail" in done.stdout
    best = study.best_trial.number
    for run in runs[best]:
        assert f"reproduce  python -m style_exp.reproduce {run.info.run_id} --tracking-uri " \
               f"{uri}" in done.stdout
    # compare --study: the trials' runs (not the study's own run), with the Pareto front
    command = f"compare    python -m style_exp.compare --study {study.study_name} " \
              f"--tracking-uri {uri}"
    assert command in done.stdout
    assert compare.main([*command.split()[4:], "--out", str(tmp_path / "cmp")]) == 0
    rows = (tmp_path / "cmp" / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and (tmp_path / "cmp" / "pareto.png").is_file()


def test_the_pareto_front_is_the_runs_no_other_beats_on_both_distances():
    points = [(0.9, 0.3), (0.95, 0.28), (0.96, 0.29), (0.9, 0.3), (0.8, 0.5), (0.85, 0.5)]
    # a tie stays on the front; beaten on one axis and equal on the other is dominated
    assert non_dominated(points) == [True, True, False, True, True, False]


def _killed_while_a_trial_runs(command: list[str], cwd: Path, uri: str) -> None:
    """Start the search and SIGKILL it once two trials are done and a third one's run is
    optimising: nothing can be written at the end."""
    process = subprocess.Popen([sys.executable, str(PROJECT / "run.py"), *command], cwd=cwd,
                               env=cli_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 400
    try:
        trials: list = []
        while True:
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
            if not Path(study_storage(None, uri).removeprefix("sqlite:///")).exists():
                continue
            with contextlib.suppress(Exception):  # the study's database is being created
                trials = _study(uri).trials
            # the tracking store exists once a trial has finished: read it only then
            if sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) >= 2 and any(
                    run.info.status == "RUNNING" for number, found in _trial_runs(uri).items()
                    for run in found if number >= 2):
                break
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_a_pruned_search_killed_part_way_resumes_to_completion(tmp_path):
    """Median pruning on the style distance at checkpoints; SIGKILLed while a trial runs,
    then the same command again: the killed trial is FAIL (its run FAILED), its params
    are tried again, and the study ends with all its trials; MLflow and the study agree
    trial by trial (states, values, the pruned runs' tag and stop reason)."""
    uri = store_uri(tmp_path)
    command = _search(tmp_path, uri, "optimizer=adam", "stop.tolerance=0", "iterations=24",
                      "tracking.checkpoint_every=4", "tracking.log_every=4",
                      "optimizer.lr=tag(log, interval(0.01, 30.0))",
                      "hydra.sweeper.n_trials=6", "hydra.sweeper.n_jobs=1",
                      "hydra.sweeper.pruner=median", "hydra.sweeper.pruner_startup_trials=1",
                      "hydra.sweeper.objectives=[quality/style_distance]",
                      "hydra.sweeper.direction=minimize")
    _killed_while_a_trial_runs([*command, f"hydra.sweep.dir={tmp_path / 'first'}"], tmp_path,
                               uri)
    killed = [t for t in _study(uri).trials if t.state.name == "RUNNING"]
    assert len(killed) == 1
    done = run_sweep([*command, f"hydra.sweep.dir={tmp_path / 'second'}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    study, runs = _study(uri), _trial_runs(uri)
    states = [t.state.name for t in study.trials]
    assert states.count("COMPLETE") + states.count("PRUNED") == 5 and states.count("FAIL") == 1
    assert "PRUNED" in states
    (failed,) = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed.number == killed[0].number
    retried = [t for t in study.trials if t.number > failed.number
               and t.params == failed.params]
    assert retried, "the killed trial's params are asked again"
    for trial in study.trials:
        (run,) = runs[trial.number]
        tags = run.data.tags
        if trial.state.name == "FAIL":
            assert run.info.status == "FAILED" and "killed?" in tags["error"]
            continue
        assert run.info.status == "FINISHED"
        pruned = trial.state.name == "PRUNED"
        assert (tags.get("style_exp.pruned") == "true") == pruned
        assert tags["stop_reason"].startswith("pruned: ") == pruned
        # pruned runs stopped early and still wrote their best image
        steps = run.data.metrics["time/steps"]
        assert (steps < 24) == pruned
        assert any(a.path == "output.png" for a in MlflowClient(uri).list_artifacts(
            run.info.run_id))
        if not pruned:
            assert trial.values == [pytest.approx(run.data.metrics["quality/style_distance"])]
        assert float(run.data.params["optimizer.lr"]) == pytest.approx(
            trial.params["optimizer.lr"])
    client = MlflowClient(uri)
    (study_run,) = client.search_runs(
        [client.get_experiment_by_name("style_exp").experiment_id],
        "tags.`style_exp.kind` = 'study'")
    assert study_run.info.status == "FINISHED"
    assert study_run.data.metrics["study/pruned"] == states.count("PRUNED")
    assert all(run.data.tags["mlflow.parentRunId"] == study_run.info.run_id
               for found in runs.values() for run in found)
    assert math.isfinite(study_run.data.metrics["best/quality/style_distance"])


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_a_callback_that_asks_to_stop_ends_the_run_there_and_skips_later_scales(weights,
                                                                                  optimizer):
    """How a pruned trial stops (the engine knows no Optuna): the reporter's callback
    returns a reason; the loop ends at that step with its best image, and the later
    scales of a coarse-to-fine run are not started."""
    from conftest import gradient_image, stripes_image

    from style_exp.engine.objective import Problem, build_network
    from style_exp.engine.stylize import rescaled, stylize_scales
    from style_exp.spec.loss import LossSettings
    from style_exp.spec.runspec import Scale
    from style_exp.spec.settings import NEVER_STOP, OPTIMIZERS, LoopSettings

    loss = LossSettings().weights()
    problem = Problem(gradient_image(48, 64), [stripes_image(64, 64)], [1.0], loss)
    seen = []

    def judge(progress):
        seen.append(progress.step)
        return "pruned: test" if progress.step == 6 else None

    loop = LoopSettings(optimizer=OPTIMIZERS[optimizer](), stop=NEVER_STOP, log_every=2)
    result = stylize_scales(lambda side: rescaled(problem, side), [Scale(32, 20), Scale(64, 20)],
                            build_network(weights, loss, "max"), problem.content, loop,
                            callback=judge)
    assert result.steps == 6 and result.stop_reason == "pruned: test"
    assert seen[-1] == 6 and result.image.shape[:2] == (24, 32)  # the first scale's image
    # anything but a reason (a lambda's value, here an array) asks nothing
    import numpy as np

    whole = stylize_scales(lambda side: rescaled(problem, side), [Scale(32, 4), Scale(64, 4)],
                           build_network(weights, loss, "max"), problem.content, loop,
                           callback=lambda progress: np.zeros(2))
    assert whole.steps == 8 and whole.stop_reason == "iterations"


def test_a_trial_that_missed_a_constraint_is_never_the_best():
    from style_exp.app.study import CONSTRAINTS_ATTR, best_trials

    study = optuna.create_study()
    for value, constraint in ((1.0, 0.2), (2.0, -0.1), (3.0, 0.0)):
        trial = study.ask({"x": FloatDistribution(0, 1)})
        trial.set_user_attr(CONSTRAINTS_ATTR, [constraint])
        study.tell(trial, value)
    assert [t.number for t in best_trials(study)] == [1]  # 0 is faster but over the bound
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    only_missed = optuna.create_study(directions=["minimize", "minimize"])
    trial = only_missed.ask()
    trial.set_user_attr(CONSTRAINTS_ATTR, [0.5])
    only_missed.tell(trial, [1.0, 1.0])
    assert best_trials(only_missed) == []


def test_a_long_front_shows_a_few_images_evenly_along_it_ends_kept():
    """24 of 30 trials on the front drew 24 overlapping images; now 8, both ends kept."""
    from style_exp.app.pareto import IMAGES_SHOWN, shown

    front = list(range(24))
    picked = shown(front)
    assert len(picked) == IMAGES_SHOWN and picked[0] == 0 and picked[-1] == 23
    assert all(3 <= b - a <= 4 for a, b in itertools.pairwise(picked))
    assert shown(front[:5]) == front[:5]
