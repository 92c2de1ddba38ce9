"""What a run shows on the terminal: progress while it works, where to look when it is done."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from style_exp.app.schema import TrackingConfig
from style_exp.app.sweeps import JobOutcome
from style_exp.engine.progress import Progress


class ProgressBar:
    """A progress bar over steps (or a clip's frames) showing the latest losses."""

    def __init__(self, total: int, enabled: bool, unit: str = "it"):
        self.bar = tqdm(total=total, disable=not enabled, unit=unit, dynamic_ncols=True)
        self.position = 0

    def __call__(self, progress: Progress) -> None:
        self.bar.update(progress.step - self.position)
        self.position = progress.step
        self.bar.set_postfix_str(losses_text(progress.metrics), refresh=False)

    def close(self) -> None:
        self.bar.close()


def losses_text(metrics: dict[str, float]) -> str:
    """Every loss term present, and a clip's flicker, in a few characters each."""
    parts = [f"{name.removeprefix('loss/')} {value:.3g}" for name, value in metrics.items()
             if name.startswith("loss/")]
    if "video/temporal_error" in metrics:
        parts.append(f"temporal error {metrics['video/temporal_error']:.1f}")
    return " ".join(parts)



def run_summary(name: str, run_id: str, output: Path, quality: str, url: str,
                ui_command: str | None, runs_url: str | None = None) -> str:
    """What a finished run says last: which run, how it came out, where to look (the run's
    page, then its experiment's prepared view of all runs)."""
    return "\n".join([f"Run '{name}' finished" + (f": {quality}" if quality else ""),
                      f"  output     {output}",
                      f"  run id     {run_id}",
                      dashboard_line(url, ui_command),
                      *([f"  all runs   {runs_url}"] if runs_url else [])])


def sweep_summary(sweep: str, runs: int, compare_command: str, url: str,
                  ui_command: str | None, outcomes: Sequence[JobOutcome] = ()) -> str:
    """What a finished sweep says last: its id, how its jobs ended (each one that did not
    finish with its override and error), how to compare it, where to look."""
    header = f"Sweep {sweep}: {runs} run{'' if runs == 1 else 's'}"
    counts = Counter(outcome.status for outcome in outcomes)
    if set(counts) - {"finished"}:
        header = f"Sweep {sweep}: {len(outcomes)} jobs, " + ", ".join(
            f"{counts[status]} {status}" for status in ("finished", "skipped", "pruned", "failed",
                                                         "killed") if counts[status])
    unfinished = [outcome for outcome in outcomes if outcome.status in ("failed", "killed")]
    lines = [header]
    for outcome in unfinished:  # skipped jobs finished in the sweep resumed: nothing to say
        lines.append(f"  {outcome.status:<10} job {outcome.job} "
                     f"({' '.join(outcome.overrides) or 'no overrides'}): {outcome.error}")
    return "\n".join([*lines, f"  compare    {compare_command}", dashboard_line(url, ui_command)])


def dashboard_line(url: str, ui_command: str | None) -> str:
    """The page to open, after the command that serves it when the store is local."""
    return f"  dashboard  {ui_command}   then open {url}" if ui_command else f"  dashboard  {url}"


def compare_command(sweep: str, experiment: str, tracking_uri: str | None) -> str:
    """The ``style_exp.compare`` command line for one sweep (defaults left out)."""
    command = f"python -m style_exp.compare --sweep {sweep}"
    if experiment != TrackingConfig.experiment:
        command += f" --experiment {experiment}"
    return command + (f" --tracking-uri {tracking_uri}" if tracking_uri else "")
