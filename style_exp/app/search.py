"""``hydra/sweeper=optuna``: a search by Optuna's ask/tell, its trials run by any launcher.

    python run.py -m hydra/sweeper=optuna hydra.sweeper.n_trials=30 \\
        'loss.style_weight=tag(log, interval(50, 5000))'      (or: search=tradeoff)

The override grammar is that of Hydra's Optuna sweeper plugin: ``interval(a, b)``
(``tag(log, interval(a, b))`` for a log scale), ``choice(a, b, ...)`` or ``a,b,c``,
``range(a, b[, step])``; other overrides are passed to every trial. Trials are asked for
``n_jobs`` at a time and launched as one batch through the configured launcher; each
job's values (``sweeps.JobOutcome.metrics``: the run's final quality distances and its
time) are told to the study, a job that failed as FAIL, a pruned one as PRUNED. The
study is kept where ``study.study_storage`` says (``search.storage``, the team server's
database, or beside a SQLite MLflow store) under a name derived from the command line,
so the same command again resumes it; ``search.repeats=N`` runs each trial with N seeds
and tells their mean. The plugin entry point is
``hydra_plugins/style_exp_search``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import (
    IntervalSweep,
    Override,
    RangeSweep,
    Transformer,
)
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from style_exp.app.parse import without_credentials
from style_exp.app.schema import TrackingConfig, default_tracking_uri, settings_from
from style_exp.app.sweeps import JobOutcome, command_digest
from style_exp.spec.metrics import CONTENT_DISTANCE, STYLE_DISTANCE
from style_exp.spec.search import STUDY_STORAGE_ENV, SearchSettings, masked
from style_exp.spec.settings import ConfigError, check_choice

TARGET = "hydra_plugins.style_exp_search.optuna_sweeper.OptunaSweeper"
SAMPLERS = ("tpe", "nsga2", "random")
OBJECTIVES = (CONTENT_DISTANCE, STYLE_DISTANCE)
# Keys that name or place the study rather than choose what it searches.
NOT_IN_NAME = ("search.study=", "search.storage=", "sweep.resume=")


@dataclass
class SearchSweeperConf:
    """``hydra.sweeper`` for ``hydra/sweeper=optuna`` (the plugin's keys, and ours)."""

    _target_: str = TARGET
    n_trials: int = 20  # trials in the study, those of earlier sweeps of it included
    n_jobs: int = 2  # trials launched together (one launcher batch)
    direction: Any = field(default_factory=lambda: ["minimize", "minimize"])  # per objective
    objectives: list[str] = field(default_factory=lambda: list(OBJECTIVES))  # run metrics
    constraints: dict[str, float] = field(default_factory=dict)  # metric: largest allowed
    sampler: str = "tpe"  # tpe | nsga2 | random
    seed: int | None = None  # the sampler's
    pruner: str = "none"  # none | median | halving (single quality objective only)
    pruner_startup_trials: int = 5  # median: trials finished before it prunes
    params: dict[str, str] | None = None  # key: override grammar, as on the command line


def distribution(override: Override) -> Any:
    """The Optuna distribution a sweep override stands for (the plugin's reading of it)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    value = override.value()
    if override.is_choice_sweep() or (isinstance(value, RangeSweep) and value.shuffle):
        return CategoricalDistribution(list(override.sweep_iterator(Transformer.encode)))
    if isinstance(value, RangeSweep):
        if any(isinstance(v, float) for v in (value.start, value.stop, value.step)):
            return FloatDistribution(value.start, value.stop - value.step, step=value.step)
        return IntDistribution(int(value.start), int(value.stop) - int(value.step),
                               step=int(value.step))
    if isinstance(value, IntervalSweep):
        ints = isinstance(value.start, int) and isinstance(value.end, int)
        kind = IntDistribution if ints else FloatDistribution
        return kind(value.start, value.end, log="log" in value.tags)
    raise ConfigError(f"{override.input_line} is not a sweep Optuna can search",
                      override.key_or_group, "use interval(), choice(), range() or a,b,c")


def search_space(arguments: Sequence[str],
                 params: dict[str, str] | None) -> tuple[dict[str, Any], list[str]]:
    """The swept keys' distributions and the overrides every trial gets, from the
    command line and the sweeper's ``params`` (the command line wins)."""
    given = {line.split("=", 1)[0].lstrip("+~") for line in arguments}
    preset = [f"{key}={value}" for key, value in (params or {}).items() if key not in given]
    parsed = OverridesParser.create().parse_overrides([*preset, *arguments])
    space = {o.get_key_element(): distribution(o) for o in parsed if o.is_sweep_override()}
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    return space, fixed


def trial_overrides(params: dict[str, Any]) -> list[str]:
    return [f"{key}={value}" for key, value in params.items()]


class SearchSweeper(Sweeper):
    """Asks an Optuna study for trials, launches them in batches and tells it the results."""

    def __init__(self, **settings: Any) -> None:
        self.settings = SearchSweeperConf(**{
            key: OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            for key, value in settings.items()})
        self.job_idx = 0

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        from style_exp.app.study import study_storage

        self.config, self.hydra_context = config, hydra_context
        self.search = settings_from(config.search, SearchSettings)
        self.search.check("search.")
        self.uri = without_credentials(config.tracking.uri) or default_tracking_uri()
        # Derived once, before any job: the trials read it from the environment (a Ray
        # launcher's workers get theirs when the launcher is made, below), never from an
        # override, which Hydra prints and each run records.
        self.storage = study_storage(self.search.storage, self.uri)
        os.environ[STUDY_STORAGE_ENV] = self.storage
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> list[Any]:
        from style_exp.app import study as studies

        s = self.settings
        directions = [s.direction] * len(s.objectives) if isinstance(s.direction, str) else \
            list(s.direction)
        if len(directions) != len(s.objectives):
            raise ConfigError(f"{len(directions)} directions for {len(s.objectives)} "
                              f"objectives {list(s.objectives)}", "hydra.sweeper.direction")
        check_choice("hydra.sweeper.sampler", s.sampler, SAMPLERS)
        check_choice("hydra.sweeper.pruner", s.pruner, studies.PRUNERS)
        space, fixed = search_space(arguments, s.params)
        search, uri = self.search, self.uri
        experiment = self.config.tracking.experiment
        name = search.study or "search-" + command_digest(
            [*(line for line in fixed if not line.startswith(NOT_IN_NAME)),
             *(f"{key}={value!r}" for key, value in sorted(space.items())),
             f"objectives={list(s.objectives)}", f"directions={directions}"])
        fixed = [line for line in fixed if not line.startswith("search.storage=")]
        if not search.study:
            fixed.append(f"search.study={name}")
        with studies.quiet_optuna():
            study = self._study(studies, name, directions)
        shown = [f"search.storage={masked(self.storage)}" if line.startswith("search.storage=")
                 else line for line in arguments]
        run_id = studies.study_run(uri, experiment, study,
                                   f"Optuna study {name}: {' '.join(shown)}", self.storage)
        returns = self._run_trials(study, space, fixed, search.repeats)
        with studies.quiet_optuna():
            runs = studies.trial_runs(uri, experiment, name)
            studies.record_study(uri, run_id, study, s.objectives, runs)
        from mlflow.tracking import MlflowClient

        MlflowClient(uri).set_terminated(run_id)
        print(search_summary(study, s.objectives, runs, self.config.tracking.uri, experiment,
                             self.storage), flush=True)
        return returns

    def _study(self, studies: Any, name: str, directions: list[str]) -> Any:
        """The study, created or loaded; trials an earlier sweep left RUNNING (it was
        killed) are FAIL, and their params asked again first."""
        import optuna

        storage = studies.rdb_storage(self.storage)
        study = optuna.create_study(storage=storage, study_name=name, directions=directions,
                                    sampler=self._sampler(), load_if_exists=True)
        if [d.name.lower() for d in study.directions] != directions:
            raise ConfigError(f"study {name} was created with other directions "
                              f"{[d.name.lower() for d in study.directions]}", "search.study")
        study.set_user_attr(studies.OBJECTIVES_ATTR, list(self.settings.objectives))
        study.set_user_attr(studies.PRUNER_ATTR, {
            "name": self.settings.pruner, "startup_trials": self.settings.pruner_startup_trials})
        for stale in study.get_trials(deepcopy=False,
                                      states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(stale.number, state=optuna.trial.TrialState.FAIL)
            study.enqueue_trial(stale.params, skip_if_exists=False)
        return study

    def _sampler(self) -> Any:
        import optuna

        s = self.settings
        from style_exp.app.study import CONSTRAINTS_ATTR

        constraints = (lambda trial: trial.user_attrs.get(CONSTRAINTS_ATTR, [0.0])) \
            if s.constraints else None
        if s.sampler == "random":
            return optuna.samplers.RandomSampler(seed=s.seed)
        if s.sampler == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=s.seed, constraints_func=constraints)
        return optuna.samplers.TPESampler(seed=s.seed, constraints_func=constraints)

    def _run_trials(self, study: Any, space: dict[str, Any], fixed: list[str],
                    repeats: int) -> list[Any]:
        """Ask, launch and tell, ``n_jobs`` trials at a time, until the study has
        ``n_trials`` finished ones (COMPLETE, PRUNED or FAIL)."""
        import optuna

        from style_exp.app import study as studies

        finished = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, \
            optuna.trial.TrialState.FAIL
        done = len(study.get_trials(deepcopy=False, states=finished))
        seed = int(self.config.seed)
        returns: list[Any] = []
        while done < self.settings.n_trials:
            with studies.quiet_optuna():
                trials = [study.ask(space) for _ in range(min(self.settings.n_jobs,
                                                             self.settings.n_trials - done))]
            jobs = [[*fixed, *trial_overrides(trial.params), f"search.trial={trial.number}",
                     *([f"seed={seed + r}", f"search.repeat={r}"] if repeats > 1 else [])]
                    for trial in trials for r in range(repeats)]
            batch = list(self.launcher.launch(jobs, initial_job_idx=self.job_idx))
            self.job_idx += len(jobs)
            returns.extend(batch)
            for index, trial in enumerate(trials):
                with studies.quiet_optuna():
                    self._tell(study, trial, batch[index * repeats:(index + 1) * repeats])
            done += len(trials)
        return returns

    def _tell(self, study: Any, trial: Any, returns: list[Any]) -> None:
        """A trial's values (the mean over its repeats) told to the study; FAIL if a job
        failed or lacks an objective, PRUNED if its first seed's run was pruned."""
        import optuna
        from hydra.core.utils import JobStatus

        from style_exp.app.study import CONSTRAINTS_ATTR, mean_values

        State = optuna.trial.TrialState
        outcomes = [r.return_value for r in returns if r.status == JobStatus.COMPLETED
                    and isinstance(r.return_value, JobOutcome)]
        if len(outcomes) < len(returns) or any(o.status in ("failed", "killed")
                                                for o in outcomes):
            study.tell(trial, state=State.FAIL)
            return
        if outcomes[0].status == "pruned":
            study.tell(trial, state=State.PRUNED)
            return
        values = mean_values([o.metrics for o in outcomes], self.settings.objectives)
        if not all(math.isfinite(v) for v in values):
            study.tell(trial, state=State.FAIL)
            return
        if self.settings.constraints:
            means = mean_values([o.metrics for o in outcomes], list(self.settings.constraints))
            trial.set_user_attr(CONSTRAINTS_ATTR, [m - bound for m, bound in zip(
                means, self.settings.constraints.values(), strict=True)])
        study.tell(trial, values)


def search_summary(study: Any, objectives: Sequence[str], runs: dict[int, list[Any]],
                   given_uri: str | None, experiment: str, storage: str) -> str:
    """The study's counts and where it is kept (``storage``, its password masked), and
    each best trial: its values, params, runs and the command that reproduces each run."""
    from style_exp.app.study import best_trials

    states = [t.state.name for t in study.trials]
    lines = [f"Study {study.study_name}: {len(states)} trials, " + ", ".join(
        f"{states.count(state)} {state.lower()}" for state in ("COMPLETE", "PRUNED", "FAIL")
        if states.count(state)), f"  kept in    {masked(storage)}"]
    best = best_trials(study)
    if not best:
        lines.append("  best trial: none (no trial completed and met the constraints)")
    elif len(best) == 1:
        lines.append("  best trial:")
    else:
        lines.append(f"  Pareto front ({len(best)} trials):")
    option = f" --tracking-uri {given_uri}" if given_uri else ""
    for trial in best:
        values = "  ".join(f"{name.split('/')[-1]}={value:.4g}"
                           for name, value in zip(objectives, trial.values, strict=True))
        params = " ".join(trial_overrides(trial.params))
        lines.append(f"    trial {trial.number}: {values}  ({params})")
        for run in runs.get(trial.number, []):
            lines.append(f"      reproduce  python -m style_exp.reproduce {run.info.run_id}"
                         f"{option}")
    named = "" if experiment == TrackingConfig.experiment else f" --experiment {experiment}"
    lines.append(f"  compare    python -m style_exp.compare --study {study.study_name}{named}"
                 f"{option}")
    return "\n".join(lines)
