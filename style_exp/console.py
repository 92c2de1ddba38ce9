"""What a run shows on the terminal while it works."""

from __future__ import annotations

from tqdm import tqdm

from style_exp.stylize import Progress


class ProgressBar:
    """A progress bar over steps (or a clip's frames) showing the latest losses."""

    def __init__(self, total: int, enabled: bool, unit: str = "it"):
        self.bar = tqdm(total=total, disable=not enabled, unit=unit, dynamic_ncols=True)
        self.position = 0

    def __call__(self, progress: Progress) -> None:
        self.bar.update(progress.step - self.position)
        self.position = progress.step
        self.bar.set_postfix_str(describe(progress.metrics), refresh=False)

    def close(self) -> None:
        self.bar.close()


def describe(metrics: dict[str, float]) -> str:
    """Every loss term present, and a clip's flicker, in a few characters each."""
    parts = [f"{name.removeprefix('loss/')} {value:.3g}" for name, value in metrics.items()
             if name.startswith("loss/")]
    if "video/temporal_error" in metrics:
        parts.append(f"temporal error {metrics['video/temporal_error']:.1f}")
    return " ".join(parts)
