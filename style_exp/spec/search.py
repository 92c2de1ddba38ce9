"""A search's settings as a run sees them: where its study lives and which trial it is.

The Optuna sweeper (``app/search.py``) asks the study for trials and hands each job its
trial number as ``search.trial``; the job reports its checkpoints' quality to that trial
(``app/study.py``). Plain values: every layer may hold one.
"""

from __future__ import annotations

from dataclasses import dataclass

from style_exp.spec.settings import ConfigError, check_positive


@dataclass(frozen=True)
class SearchSettings:
    """The ``search`` keys: where the study is kept, its name, seeds per trial, this job's
    trial (set by the sweeper for each job; -1: the run is no trial)."""

    storage: str | None = None  # SQLAlchemy URL; default: beside a SQLite tracking store
    study: str | None = None  # default: derived from the sweep's command line
    repeats: int = 1  # seeds per trial (seed, seed+1, ...); the trial's value is their mean
    trial: int = -1
    repeat: int = 0  # which of the trial's seeds this job runs

    def check(self, prefix: str = "") -> None:
        check_positive(f"{prefix}repeats", self.repeats)
        if self.trial < -1:
            raise ConfigError(f"must be a trial number or -1, got {self.trial}", f"{prefix}trial")
        if not 0 <= self.repeat < self.repeats:
            raise ConfigError(f"must be in [0, search.repeats), got {self.repeat}",
                              f"{prefix}repeat")

    @property
    def is_trial(self) -> bool:
        return self.trial >= 0


NO_SEARCH = SearchSettings()
