"""A sweep's identity (its id, its swept keys and each job's tags) and its jobs' outcomes.

Every job of a sweep must agree on these without talking to the others: the id comes
from Hydra's sweep directory, which all jobs share; a job on a cluster, which may not
see that directory, gets the id and the swept keys from the driver's environment
(``cluster.worker_env`` puts them there). Plain values only: no MLflow, no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from style_exp.app.batches import as_typed

SWEEP_ENV = "STYLE_EXP_SWEEP"  # the driver's SweepIdentity, for its jobs
SWEEP_COMMAND_TAG = "sweep_command"  # the run's sweep's command digest
RESUME_KEY = "sweep.resume="
OUTCOME_FILE = "outcome.json"  # in each job's directory: how the job ended


@dataclass(frozen=True)
class JobOutcome:
    """How one job of a sweep ended, as its launching process reads it back to sum up."""

    job: int
    overrides: tuple[str, ...]
    status: str  # finished | skipped (sweep.resume: finished before) | pruned | failed | killed
    exit_code: int = 0
    error: str = ""  # the one line the job printed, for a job that did not finish
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # the run's last

    def write(self, job_dir: Path) -> None:
        """Recorded in the job's directory (atomically: a reader never sees half of it)."""
        job_dir.mkdir(parents=True, exist_ok=True)
        partial = job_dir / f".{OUTCOME_FILE}.partial"
        partial.write_text(json.dumps(dataclasses.asdict(self)))
        partial.replace(job_dir / OUTCOME_FILE)


@dataclass(frozen=True)
class Skipped:
    """A resumed sweep's job whose run had already FINISHED (``sweep.resume``)."""

    run_id: str


def job_outcomes(sweep_dir: Path) -> list[JobOutcome]:
    """The outcomes the sweep's jobs recorded in their directories, by job number (jobs on
    machines that do not share the sweep directory leave none here)."""
    found = []
    for path in sweep_dir.glob(f"*/{OUTCOME_FILE}"):
        fields = json.loads(path.read_text())
        found.append(JobOutcome(**{**fields, "overrides": tuple(fields["overrides"])}))
    return sorted(found, key=lambda outcome: outcome.job)


def sweep_id(sweep_dir: Path) -> str:
    """The id every job of one sweep shares: its Hydra sweep directory, made readable.

    Hydra's sweep directory is the one thing all jobs of a sweep know whatever the
    launcher (separate processes included); a short hash of its full path keeps two
    sweeps started in the same second in different places apart.
    """
    resolved = sweep_dir.resolve()
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:6]
    return f"{resolved.parent.name}_{resolved.name}-{digest}"


@dataclass(frozen=True)
class SweepIdentity:
    """What every job of a sweep shares: the id its runs are grouped by, the keys it sweeps,
    and a digest of its command line (how ``sweep.resume=true`` finds the sweep again)."""

    id: str
    swept: frozenset[str]
    command: str

    def to_env(self) -> str:
        return json.dumps({"id": self.id, "swept": sorted(self.swept), "command": self.command})

    @classmethod
    def from_env(cls, text: str) -> SweepIdentity:
        sent = json.loads(text)
        return cls(sent["id"], frozenset(sent["swept"]), sent["command"])


def identify(sweep_dir: Path, command_line: list[str],
             sweeper_params: Mapping[str, Any] | None) -> SweepIdentity:
    """The identity of the sweep Hydra runs in ``sweep_dir`` for ``command_line``."""
    return SweepIdentity(sweep_id(sweep_dir), frozenset(swept_keys(command_line, sweeper_params)),
                         command_digest(command_line))


def command_digest(command_line: list[str]) -> str:
    """The sweep's command line as typed (a batch's glob, not its files), overrides in any
    order, ``sweep.resume`` left out: the same sweep typed again has the same digest."""
    kept = sorted(item for item in as_typed(command_line) if not item.startswith(RESUME_KEY))
    return hashlib.sha1(json.dumps(kept).encode()).hexdigest()[:12]


def driver_sweep() -> SweepIdentity | None:
    """The sweep's identity as the driver sent it, if this job came from one."""
    text = os.environ.get(SWEEP_ENV)
    return SweepIdentity.from_env(text) if text else None


def sweep_tags(sweep_dir: Path, job_number: int, job_overrides: list[str]) -> dict[str, str]:
    """Tags that group one sweep's runs and carry each run's swept values.

    The driver passes the sweep's identity to its jobs (``callbacks.SweepSummary`` and,
    for Ray, ``cluster.launchers.worker_env``); a job without it reads it from the sweep
    directory.
    """
    identity = driver_sweep() or sweep_identity(sweep_dir)
    tags = {"sweep_id": identity.id, SWEEP_COMMAND_TAG: identity.command,
            "sweep.job": str(job_number)}
    for override in job_overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+~") in identity.swept:
            tags[f"sweep.{key.lstrip('+~')}"] = _unescaped(override, value)
    return tags


def _unescaped(override: str, text: str) -> str:
    """A string value as it reads (a batch's path without Hydra's escapes), else as typed."""
    value = OverridesParser.create().parse_override(override).value()
    return value if isinstance(value, str) else text


def sweep_identity(sweep_dir: Path) -> SweepIdentity:
    """The sweep's identity, read back from the ``multirun.yaml`` Hydra writes in the sweep
    directory before the first job starts."""
    multirun = sweep_dir / "multirun.yaml"
    if not multirun.is_file():
        return SweepIdentity(sweep_id(sweep_dir), frozenset(), "")
    hydra = OmegaConf.load(multirun).hydra
    return identify(sweep_dir, list(hydra.overrides.task), hydra.sweeper.get("params"))


def swept_keys(command_line: list[str], sweeper_params: Mapping[str, Any] | None) -> set[str]:
    """The keys the sweep's command line (or the sweeper's params) gave several values."""
    parsed = OverridesParser.create().parse_overrides(command_line)
    return {o.key_or_group for o in parsed if o.is_sweep_override()} | set(sweeper_params or {})


def swept_values(tags: Mapping[str, str]) -> dict[str, str]:
    """A run's swept values from its ``sweep.<key>`` tags, by key."""
    return {key.removeprefix("sweep."): value for key, value in tags.items()
            if key.startswith("sweep.") and key != "sweep.job"}
