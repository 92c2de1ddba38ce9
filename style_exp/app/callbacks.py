"""Hydra callbacks: what a sweep says when all its jobs are done.

Each job prints its own run; only the process that launched the sweep knows when the
last one has finished, so the sweep's id, how its jobs ended and the command that
compares its runs are printed from here (whatever the launcher), and the sweep exits
with its worst job's exit code.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from style_exp.app.console import compare_command, sweep_summary
from style_exp.app.outbox import unless_unreachable
from style_exp.app.schema import default_tracking_uri
from style_exp.app.sweeps import (
    OUTCOME_FILE,
    SWEEP_ENV,
    SweepIdentity,
    driver_sweep,
    identify,
    job_outcomes,
    sweep_identity,
)
from style_exp.app.tracking import (
    experiment_id,
    latest_sweep,
    sweep_run_count,
    ui_command,
)
from style_exp.app.views import sweep_view


def _resumed(config: DictConfig, identity: SweepIdentity) -> str:
    """The id of the sweep ``sweep.resume`` asks to go on with: the one named, or the latest
    of the same command (else this new one, which then runs every job)."""
    uri = config.tracking.uri or default_tracking_uri()
    experiment, resume = config.tracking.experiment, config.sweep.resume
    if resume is True:
        earlier = latest_sweep(uri, experiment, identity.command)
        if earlier is None:
            print(f"sweep.resume: no earlier sweep of this command in experiment "
                  f"{experiment!r}; every job runs", flush=True)
            return identity.id
    elif sweep_run_count(uri, experiment_id(uri, experiment), str(resume)) == 0:
        print(f"error: no runs of sweep {resume} in experiment {experiment!r} (sweep.resume)",
              file=sys.stderr)
        raise SystemExit(2)  # not an Exception: Hydra would only warn
    else:
        earlier = str(resume)
    print(f"Resuming sweep {earlier}: its finished jobs are skipped", flush=True)
    return earlier


class SweepSummary(Callback):
    """Prints the sweep id, its failed jobs, a ready-to-paste compare command and the
    dashboard link; then ends the sweep with its worst job's exit code."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Forget the outcomes of an earlier sweep run into the same directory, and tell the
        jobs the sweep's identity: a resumed sweep's id when ``sweep.resume`` is set."""
        sweep_dir = Path(config.hydra.sweep.dir)
        for stale in sweep_dir.glob(f"*/{OUTCOME_FILE}"):
            stale.unlink()
        identity = identify(sweep_dir, list(config.hydra.overrides.task),
                            config.hydra.sweeper.get("params"))
        if config.sweep.resume:
            identity = dataclasses.replace(identity, id=_resumed(config, identity))
        os.environ[SWEEP_ENV] = identity.to_env()  # jobs here and launched workers read it

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        identity = driver_sweep() or sweep_identity(sweep_dir)  # a resumed sweep's id
        sweep = identity.id
        uri = config.tracking.uri or default_tracking_uri()
        outcomes = job_outcomes(sweep_dir)
        runs, url = len(outcomes), f"{uri} (did not answer: its runs are incomplete)"
        with unless_unreachable():  # a server still away: the jobs' own lines say what to sync
            experiment = experiment_id(uri, config.tracking.experiment)
            runs = sweep_run_count(uri, experiment, sweep)
            url = sweep_view(uri, experiment, sweep, sorted(identity.swept))
        print(sweep_summary(
            sweep, runs, compare_command(sweep, config.tracking.experiment, config.tracking.uri),
            url, ui_command(uri), outcomes), flush=True)
        worst = max((outcome.exit_code for outcome in outcomes), default=0)
        if worst:
            raise SystemExit(worst)  # not an Exception: Hydra passes it on
