"""Hydra callbacks: what a sweep says when all its jobs are done.

Each job prints its own run; only the process that launched the sweep knows when the
last one has finished, so the sweep's id, how its jobs ended and the command that
compares its runs are printed from here (whatever the launcher), and the sweep exits
with its worst job's exit code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from style_exp.app.console import compare_command, sweep_summary
from style_exp.app.schema import default_tracking_uri
from style_exp.app.sweeps import OUTCOME_FILE, job_outcomes, sweep_id
from style_exp.app.tracking import dashboard_url, experiment_id, sweep_run_count, ui_command


class SweepSummary(Callback):
    """Prints the sweep id, its failed jobs, a ready-to-paste compare command and the
    dashboard link; then ends the sweep with its worst job's exit code."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Forget the outcomes of an earlier sweep run into the same directory."""
        for stale in Path(config.hydra.sweep.dir).glob(f"*/{OUTCOME_FILE}"):
            stale.unlink()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep = sweep_id(sweep_dir)
        uri = config.tracking.uri or default_tracking_uri()
        experiment = experiment_id(uri, config.tracking.experiment)
        outcomes = job_outcomes(sweep_dir)
        print(sweep_summary(
            sweep, sweep_run_count(uri, experiment, sweep),
            compare_command(sweep, config.tracking.experiment, config.tracking.uri),
            dashboard_url(uri, experiment, search=f"tags.sweep_id = '{sweep}'"),
            ui_command(uri), outcomes), flush=True)
        worst = max((outcome.exit_code for outcome in outcomes), default=0)
        if worst:
            raise SystemExit(worst)  # not an Exception: Hydra passes it on
