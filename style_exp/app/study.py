"""An Optuna study beside the MLflow store: where it lives, its trials' runs, its record.

The sweeper (``app/search.py``) asks the study for trials and tells it their values;
each trial's job reports its checkpoints' quality to the same study from its own
process (:class:`TrialJudge`), so the pruner can stop it, and tags its run with the
study and the trial number. The study itself is one MLflow run (``style_exp.kind=study``,
the parent of its trials' runs) holding its best trials, plots and history. Plain
values in: nothing here sees the config.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.entities import Run, RunStatus
from mlflow.tracking import MlflowClient

from style_exp.app.runs import liveness_tags
from style_exp.app.tracking import active, experiment_id
from style_exp.spec.search import STUDY_STORAGE_ENV, SearchSettings, masked
from style_exp.spec.settings import ConfigError

KIND_TAG, STUDY_TAG, TRIAL_TAG = "style_exp.kind", "style_exp.study", "style_exp.trial"
REPEAT_TAG, PRUNED_TAG = "style_exp.repeat", "style_exp.pruned"
STORAGE_TAG = "style_exp.study_storage"  # the study run's: where the study is kept
PARENT_TAG = "mlflow.parentRunId"  # MLflow's UI nests a trial's run under its study's
STORAGE_FILE = "optuna.db"  # beside a SQLite tracking store's mlflow.db
PRUNERS = ("none", "median", "halving")
# What the job process needs to judge its trial, kept in the study (its user attributes).
OBJECTIVES_ATTR, PRUNER_ATTR, RUN_ATTR = "objectives", "pruner", "mlflow_run_id"
CONSTRAINTS_ATTR = "constraints"  # a trial's: each constraint's value, <= 0 when met
SQLITE_TIMEOUT_S = 120  # jobs of one study write to one SQLite file at once


def study_storage(given: str | None, tracking_uri: str,
                  environ: Mapping[str, str] = os.environ) -> str:
    """Where the study lives: ``search.storage``, else beside the runs: an SQLite file next
    to a SQLite tracking store, or for a server ``$STYLE_EXP_STUDY_STORAGE`` (the team
    server's ``client.env`` names its study database). A local store keeps a local study
    even with ``client.env`` sourced, so the same command always resumes the same study;
    any other store has no database of ours to put the study in."""
    if given:
        return given
    if tracking_uri.startswith("sqlite:///"):
        return f"sqlite:///{Path(tracking_uri.removeprefix('sqlite:///')).parent / STORAGE_FILE}"
    if environ.get(STUDY_STORAGE_ENV):
        return environ[STUDY_STORAGE_ENV]
    raise ConfigError(f"the tracking store {tracking_uri} is not a local SQLite file, so the "
                      f"study needs a database every job reaches: set {STUDY_STORAGE_ENV} "
                      "or search.storage", "search.storage",
                      "the team server's client.env sets it: set -a; . DIR/client.env; set +a")


def rdb_storage(url: str) -> Any:
    """Optuna's RDB storage for ``url``; SQLite waits for other writers instead of failing."""
    import optuna

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.RDBStorage(
            url, engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}})
    return optuna.storages.RDBStorage(url)


def make_pruner(spec: Mapping[str, Any]) -> Any:
    """The pruner ``{"name": median|halving|none, "startup_trials": N}`` stands for."""
    import optuna

    if spec.get("name") == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=int(spec.get("startup_trials", 5)))
    if spec.get("name") == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's per-trial INFO lines and experimental-feature warnings off."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", module="optuna")  # e.g. its importance notes
        yield


@dataclass
class TrialJudge:
    """A trial's job's side of the study: its run's tags, and at each checkpoint its
    objective reported to the trial and the pruner asked whether to stop."""

    study: Any  # optuna.Study, loaded in the job's process
    trial: Any  # optuna.Trial, built from the trial's number
    settings: SearchSettings
    metric: str | None  # what is reported (a single quality objective), or None
    pruned: str = ""  # why the pruner stopped the run

    @classmethod
    def open(cls, settings: SearchSettings, tracking_uri: str) -> TrialJudge:
        import optuna

        with quiet_optuna():
            storage = rdb_storage(study_storage(settings.storage, tracking_uri))
            study = optuna.load_study(study_name=settings.study, storage=storage)
            attrs = study.user_attrs
            study.pruner = make_pruner(attrs.get(PRUNER_ATTR, {}))
        trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id,
                                                                   settings.trial)
        objectives = attrs.get(OBJECTIVES_ATTR, [])
        # Optuna prunes single-objective studies only; a repeated trial reports its first seed
        reported = (len(objectives) == 1 and objectives[0].startswith("quality/")
                    and attrs.get(PRUNER_ATTR, {}).get("name", "none") != "none"
                    and settings.repeat == 0)
        return cls(study, optuna.Trial(study, trial_id), settings,
                   objectives[0] if reported else None)

    def tags(self) -> dict[str, str]:
        tags = {STUDY_TAG: self.study.study_name, TRIAL_TAG: str(self.settings.trial),
                REPEAT_TAG: str(self.settings.repeat)}
        parent = self.study.user_attrs.get(RUN_ATTR)
        return {**tags, PARENT_TAG: parent} if parent else tags

    def __call__(self, step: int, metrics: Mapping[str, float]) -> str | None:
        """Report the checkpoint; the reason to stop if the pruner says so."""
        if self.metric is None or self.metric not in metrics:
            return None
        value = float(metrics[self.metric])
        with quiet_optuna():
            self.trial.report(value, step)
            if not self.trial.should_prune():
                return None
        self.pruned = (f"pruned: {self.metric}={value:.4g} at step {step} "
                       f"({type(self.study.pruner).__name__})")
        active().set_tags({PRUNED_TAG: "true", "stop_reason": self.pruned})
        return self.pruned


def study_run(tracking_uri: str, experiment: str, study: Any, description: str,
              storage: str) -> str:
    """The study's MLflow run, created on its first sweep and running again on a resumed
    one; its id is kept in the study so the trials' runs name it as their parent. It
    names the study's ``storage`` (password masked: the run is shown to every reader)."""
    client = MlflowClient(tracking_uri)
    experiment_key = experiment_id(tracking_uri, experiment)
    found = client.search_runs(
        [experiment_key], f"tags.`{KIND_TAG}` = 'study' and tags.`{STUDY_TAG}` = "
        f"'{study.study_name}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        for key, value in liveness_tags().items():
            client.set_tag(run_id, key, value)
    else:
        run_id = client.create_run(
            experiment_key, run_name=f"study {study.study_name}",
            tags={KIND_TAG: "study", STUDY_TAG: study.study_name,
                  "mlflow.note.content": description, **liveness_tags()}).info.run_id
    client.set_tag(run_id, STORAGE_TAG, masked(storage))
    study.set_user_attr(RUN_ATTR, run_id)
    return run_id


def trial_runs(tracking_uri: str, experiment: str, study_name: str) -> dict[int, list[Run]]:
    """The study's trials' MLflow runs, by trial number (several with repeats)."""
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([experiment_id(tracking_uri, experiment)],
                              f"tags.`{STUDY_TAG}` = '{study_name}'", max_results=10_000)
    by_trial: dict[int, list[Run]] = {}
    for run in runs:
        if TRIAL_TAG in run.data.tags:
            by_trial.setdefault(int(run.data.tags[TRIAL_TAG]), []).append(run)
    return by_trial


def feasible(trial: Any) -> bool:
    """Whether a trial met the search's constraints (each stored value <= 0; none: met)."""
    return all(value <= 0 for value in trial.user_attrs.get(CONSTRAINTS_ATTR, []))


def best_trials(study: Any) -> list[Any]:
    """The best trial, or a multi-objective study's Pareto front, by trial number, among
    the complete trials that met the constraints (none if none did)."""
    complete = [t for t in study.trials if t.state.name == "COMPLETE" and feasible(t)]
    if not complete:
        return []
    if len(study.directions) > 1:
        return sorted((t for t in study.best_trials if feasible(t)),
                      key=lambda trial: trial.number)
    sign = -1.0 if study.direction.name == "MAXIMIZE" else 1.0
    return [min(complete, key=lambda trial: (sign * trial.values[0], trial.number))]


def record_study(tracking_uri: str, run_id: str, study: Any, objectives: Sequence[str],
                 runs: Mapping[int, list[Run]]) -> None:
    """Write the study's outcome into its MLflow run: the best trials (as tags, metrics and
    ``best_trials.json``), every trial with its runs (``trials.json``) and the plots."""
    client = MlflowClient(tracking_uri)
    best = best_trials(study)
    counts = {state: sum(t.state.name == state for t in study.trials)
              for state in ("COMPLETE", "PRUNED", "FAIL")}
    for state, count in counts.items():
        client.log_metric(run_id, f"study/{state.lower()}", count)
    table = [trial_record(trial, objectives, runs.get(trial.number, [])) for trial in study.trials]
    client.log_text(run_id, json.dumps(table, indent=1), "trials.json")
    client.log_text(run_id, json.dumps([trial_record(t, objectives, runs.get(t.number, []))
                                        for t in best], indent=1), "best_trials.json")
    if best and len(best) == 1:
        client.set_tag(run_id, "best.trial", str(best[0].number))
        for name, value in zip(objectives, best[0].values, strict=True):
            client.log_metric(run_id, f"best/{name}", value)
    with tempfile.TemporaryDirectory() as folder:
        for path in study_plots(study, objectives, Path(folder)):
            client.log_artifact(run_id, str(path), "plots")


def trial_record(trial: Any, objectives: Sequence[str], runs: Sequence[Run]) -> dict[str, Any]:
    values = dict(zip(objectives, trial.values or [], strict=False))
    return {"number": trial.number, "state": trial.state.name, "values": values,
            "params": trial.params, "runs": sorted(run.info.run_id for run in runs)}


def study_plots(study: Any, objectives: Sequence[str], folder: Path) -> list[Path]:
    """Optuna's own plots of the study (Pareto front or history, importances), as PNGs;
    a plot the study has too few trials for is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    multi = len(objectives) > 1
    wanted = {"importances.png": lambda: plots.plot_param_importances(
        study, target=(lambda t: t.values[0]) if multi else None, target_name=objectives[0])}
    if multi:
        wanted["pareto_front.png"] = lambda: plots.plot_pareto_front(
            study, target_names=list(objectives))
    else:
        wanted["history.png"] = lambda: plots.plot_optimization_history(
            study, target_name=objectives[0])
    written = []
    for name, plot in wanted.items():
        with quiet_optuna(), contextlib.suppress(ValueError, RuntimeError, ZeroDivisionError):
            axes = plot()
            figure = getattr(axes, "figure", None) or axes.flat[0].figure
            figure.savefig(folder / name, dpi=100, bbox_inches="tight")
            plt.close(figure)
            written.append(folder / name)
    return written


def mean_values(metrics: Sequence[Mapping[str, float]], objectives: Sequence[str]) -> list[float]:
    """Each objective's mean over a trial's repeats (``math.nan`` where one lacks it)."""
    return [sum(m.get(name, math.nan) for m in metrics) / len(metrics) for name in objectives]
