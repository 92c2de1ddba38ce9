"""Adam (constant lr), Adam (decaying lr) and L-BFGS (plain and preconditioned) on one
real problem, side by side.

Each optimiser runs for the same number of iterations, reporting the loss at every
step with its wall time, so one trace answers both comparisons: equal iterations
and equal wall-clock budget. It also finds, for each optimiser, the iterations and
seconds it needs to reach the loss Adam (constant lr) reaches at the end.

    python benchmarks/optimizers.py --size 256 --iterations 1000

Writes a Markdown and CSV table and a plot to --out, and logs everything to MLflow
(experiment `benchmarks`: one parent run, a child run per optimiser).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np

from style_exp.app.schema import default_tracking_uri
from style_exp.app.tables import write_tables
from style_exp.app.tracking import environment_tags, experiment_id
from style_exp.engine.images import load_image, save_image
from style_exp.engine.objective import Problem, build_network
from style_exp.engine.progress import Progress
from style_exp.engine.stylize import stylize
from style_exp.engine.weights import IMAGENET_MEAN_RGB, load_weights
from style_exp.spec.loss import LossSettings
from style_exp.spec.settings import (
    NEVER_STOP,
    AdamSettings,
    LBFGSSettings,
    LoopSettings,
    OptimizerSettings,
)

IMAGES = Path(os.environ.get("STYLE_EXP_IMAGES", Path(__file__).resolve().parents[2]
                             / "shared" / "images"))


@dataclass
class Trace:
    name: str
    steps: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    evaluations: list[float] = field(default_factory=list)
    image: np.ndarray | None = None

    def record(self, progress: Progress, started: float) -> None:
        self.steps.append(progress.step)
        self.seconds.append(time.perf_counter() - started)
        self.losses.append(progress.metrics["loss/total"])
        self.evaluations.append(progress.metrics.get("lbfgs/evaluations", progress.step))

    def first_reaching(self, target: float) -> tuple[int, float] | None:
        """(iterations, seconds) at which the loss first falls to ``target``."""
        for step, seconds, loss in zip(self.steps, self.seconds, self.losses, strict=True):
            if loss <= target:
                return step, seconds
        return None

    def loss_at_time(self, budget: float) -> float:
        """The best loss reached within ``budget`` seconds."""
        within = [loss for seconds, loss in zip(self.seconds, self.losses, strict=True)
                  if seconds <= budget]
        return min(within) if within else float("nan")


def optimizers(lr: float, iterations: int) -> dict[str, OptimizerSettings]:
    return {
        "adam_constant": AdamSettings(lr=lr),
        "adam_cosine": AdamSettings(lr=lr, schedule="cosine", decay_rate=0.1,
                                    decay_steps=iterations),
        "lbfgs_plain": LBFGSSettings(smoothing=0.0),
        "lbfgs": LBFGSSettings(),
    }


def run_trace(name: str, optimizer: OptimizerSettings, problem: Problem, network, init: np.ndarray,
              iterations: int) -> Trace:
    trace = Trace(name)
    started = time.perf_counter()
    loop = LoopSettings(optimizer=optimizer, stop=NEVER_STOP, log_every=1)
    result = stylize(problem, network, init, loop, iterations,
                     callback=lambda p: trace.record(p, started))
    trace.image = result.image
    return trace


def table_rows(traces: list[Trace], target: float, budget: float) -> list[dict[str, object]]:
    """One row per optimiser; time fractions are relative to the first trace's (Adam's)."""
    adam_reached = traces[0].first_reaching(target)
    rows = []
    for trace in traces:
        reached = trace.first_reaching(target)
        rows.append({
            "optimizer": trace.name,
            "iterations": trace.steps[-1],
            "evaluations": int(trace.evaluations[-1]),
            "best_loss": min(trace.losses),
            "seconds": trace.seconds[-1],
            "ms_per_iteration": 1000 * trace.seconds[-1] / trace.steps[-1],
            f"loss_at_{budget:.0f}s": trace.loss_at_time(budget),
            "iterations_to_target": reached[0] if reached else "not reached",
            "seconds_to_target": round(reached[1], 1) if reached else "not reached",
            "time_vs_adam": round(reached[1] / adam_reached[1], 3)
            if reached and adam_reached else "not reached",
        })
    return rows


def plot(traces: list[Trace], target: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=100)
    for trace in traces:
        by_step.plot(trace.steps, trace.losses, label=trace.name)
        by_time.plot(trace.seconds, trace.losses, label=trace.name)
    lowest = min(min(trace.losses) for trace in traces)
    for axes, label in ((by_step, "iteration"), (by_time, "seconds")):
        axes.axhline(target, color="grey", linestyle="--", linewidth=1, label="target")
        axes.set_yscale("log")
        axes.set_ylim(0.97 * lowest, 1.6 * target)  # the approach to the target, not the start
        axes.set_xlabel(label)
        axes.set_ylabel("total loss")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--content", default=str(IMAGES / "stata.jpg"))
    parser.add_argument("--style", nargs="+",
                        default=[str(IMAGES / "dora_maar.jpg"), str(IMAGES / "starry_night.jpg")])
    parser.add_argument("--style-weights", nargs="+", type=float, default=[0.8, 0.2])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall-clock budget for the equal-time column "
                             "(default: a third of Adam's total time)")
    parser.add_argument("--lr", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/optimizers"))
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()

    content = load_image(args.content, args.size)
    styles = [load_image(path, args.size) for path in args.style]
    blend = [w / sum(args.style_weights) for w in args.style_weights]
    loss = LossSettings().weights()
    problem = Problem(content, styles, blend, loss)
    network = build_network(load_weights(), loss, "max")
    rng = np.random.default_rng(args.seed)
    init = IMAGENET_MEAN_RGB + rng.normal(0, 0.256, content.shape).astype(np.float32)

    traces = []
    for name, optimizer in optimizers(args.lr, args.iterations).items():
        print(f"running {name} for {args.iterations} iterations at {content.shape[1]}x"
              f"{content.shape[0]} ...", flush=True)
        traces.append(run_trace(name, optimizer, problem, network, init, args.iterations))
    target = min(traces[0].losses)  # the loss of the image Adam returns
    budget = args.budget_s or traces[0].seconds[-1] / 3
    rows = table_rows(traces, target, budget)

    args.out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = write_tables(
        rows, args.out / "optimizers",
        f"Target: total loss {target:.4g} (the best Adam with a constant lr reached)")
    plot_path = plot(traces, target, args.out / "optimizers.png")
    print(md_path.read_text())

    uri = args.tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = experiment_id(uri, "benchmarks")
    with mlflow.start_run(experiment_id=experiment, run_name="optimizer-comparison",
                          tags={**environment_tags(), "benchmark": "optimizers"}):
        mlflow.log_params({"content": args.content, "style": ",".join(args.style),
                           "size": args.size, "iterations": args.iterations, "lr": args.lr,
                           "target_loss": target, "budget_s": budget})
        for trace, row in zip(traces, rows, strict=True):
            image_path = save_image(trace.image, args.out / f"{trace.name}.png")
            with mlflow.start_run(experiment_id=experiment, run_name=trace.name, nested=True):
                for step, seconds, value in zip(trace.steps, trace.seconds, trace.losses,
                                                strict=True):
                    mlflow.log_metrics({"loss/total": value, "time/elapsed_s": seconds},
                                       step=step)
                mlflow.log_metrics({k: v for k, v in row.items()
                                    if isinstance(v, (int, float)) and k != "iterations"})
                mlflow.log_artifact(str(image_path))
        for path in (csv_path, md_path, plot_path):
            mlflow.log_artifact(str(path))


if __name__ == "__main__":
    main()
