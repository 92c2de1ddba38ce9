"""A search's settings as a run sees them: where its study lives and which trial it is.

The Optuna sweeper (``app/search.py``) asks the study for trials and hands each job its
trial number as ``search.trial``; the job reports its checkpoints' quality to that trial
(``app/study.py``). Plain values: every layer may hold one.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from style_exp.spec.settings import ConfigError, check_positive

# Where a search keeps its study when ``search.storage`` is not given: the team server's
# ``client.env`` sets it to the study database it provisioned (``style_exp.server``).
STUDY_STORAGE_ENV = "STYLE_EXP_STUDY_STORAGE"


@dataclass(frozen=True)
class SearchSettings:
    """The ``search`` keys: where the study is kept, its name, seeds per trial, this job's
    trial (set by the sweeper for each job; -1: the run is no trial)."""

    storage: str | None = None  # SQLAlchemy URL; default: $STYLE_EXP_STUDY_STORAGE, else
    # beside a SQLite tracking store
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


def masked(uri: str) -> str:
    """``uri`` as it may be shown or recorded: its password, if any, as ``***``."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    userinfo, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{host}").geturl()
