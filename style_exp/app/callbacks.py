"""Hydra callbacks: what a sweep says when all its jobs are done.

Each job prints its own run; only the process that launched the sweep knows when the
last one has finished, so the sweep's id and the command that compares its runs are
printed from here (whatever the launcher).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from style_exp.app.console import compare_command, sweep_summary
from style_exp.app.schema import default_tracking_uri
from style_exp.app.sweeps import sweep_id
from style_exp.app.tracking import dashboard_url, experiment_id, sweep_run_count, ui_command


class SweepSummary(Callback):
    """Prints the sweep id, a ready-to-paste compare command and the dashboard link."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep = sweep_id(Path(config.hydra.sweep.dir))
        uri = config.tracking.uri or default_tracking_uri()
        experiment = experiment_id(uri, config.tracking.experiment)
        print(sweep_summary(
            sweep, sweep_run_count(uri, experiment, sweep),
            compare_command(sweep, config.tracking.experiment, config.tracking.uri),
            dashboard_url(uri, experiment, search=f"tags.sweep_id = '{sweep}'"),
            ui_command(uri)))
