"""An Optuna search against a grid of the same budget, and what pruning saves.

    python -m benchmarks.search [--pairs tubingen:starry_night,...] [--size 128]
                                [--iterations 200] [--budget 30] [--startup 5] [--out DIR]

For each photo/painting pair (in ``../shared/images``), over the ranges of
``search=tradeoff`` (style weight 50..5000 and TV weight 1..1000, both log):

- **front**: a ``budget``-run grid (log-spaced, ``rows x columns`` as square as the budget
  allows) and a ``budget``-trial ``search=tradeoff``; the hypervolume of each Pareto front
  of (content distance, style distance), against one reference point per pair (the worst
  distance seen by either, plus 10%), larger is better;
- **pruning**: the single-objective search (style distance) with and without the median
  pruner, same sampler seed: wall time of the whole search and the best value found.

Every arm is a ``run.py -m`` in its own tracking store (``--out``), run one job at a
time (the basic launcher). A Markdown table goes to stdout and ``DIR/search.md``.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROJECT = Path(__file__).resolve().parents[1]
IMAGES = PROJECT.parent / "shared" / "images"
STYLE_RANGE, TV_RANGE = (50.0, 5000.0), (1.0, 1000.0)  # as conf/search/tradeoff.yaml


def hypervolume(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """The area dominated by ``points`` (both minimised) inside ``reference``."""
    front = sorted(p for p in points if p[0] < reference[0] and p[1] < reference[1])
    area, best_y = 0.0, reference[1]
    for x, y in front:
        if y < best_y:
            area += (reference[0] - x) * (best_y - y)
            best_y = y
    return area


def grid_values(budget: int) -> tuple[list[float], list[float]]:
    """Log-spaced style and TV weights, ``rows x columns <= budget`` as square as can be."""
    rows = max(1, int(math.sqrt(budget)))
    columns = budget // rows
    return (list(np.geomspace(*STYLE_RANGE, columns)), list(np.geomspace(*TV_RANGE, rows)))


def run(args: list[str], store: Path) -> float:
    """``run.py -m ARGS`` into ``store``; its wall seconds."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(PROJECT / "run.py"), "-m", *args,
                           f"tracking.uri=sqlite:///{store / 'mlflow.db'}", "progress=false",
                           f"hydra.sweep.dir={store / 'sweep'}"], cwd=PROJECT,
                          capture_output=True, text=True)
    if done.returncode not in (0, 1, 2):
        raise RuntimeError(done.stderr[-2000:])
    return time.perf_counter() - started


def distances(store: Path) -> list[tuple[float, float]]:
    """(content, style) distance of every finished, unpruned run of the store."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("style_exp")
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'FINISHED'",
                              max_results=10_000)
    return [(r.data.metrics["quality/content_distance"], r.data.metrics["quality/style_distance"])
            for r in runs if "quality/style_distance" in r.data.metrics
            and r.data.tags.get("style_exp.pruned") != "true"
            and r.data.tags.get("style_exp.kind") != "study"]


def best_and_pruned(store: Path) -> tuple[float, int]:
    """The study's best value and how many of its trials were pruned."""
    import optuna

    storage = f"sqlite:///{store / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    return study.best_value, sum(t.state.name == "PRUNED" for t in study.trials)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="tubingen:starry_night,stata:the_scream,"
                                           "tubingen:woman-with-hat-matisse")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--startup", type=int, default=5, help="trials before pruning starts")
    parser.add_argument("--out", type=Path, default=PROJECT / "runs" / "benchmarks" / "search")
    args = parser.parse_args(argv)
    rows = ["| pair | grid runs | grid HV | search trials | search HV | no pruning: s, best | "
            "median pruning: s, best, pruned |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for pair in args.pairs.split(","):
        content, style = pair.split(":")
        common = [f"content={IMAGES / (content + '.jpg')}", f"style={IMAGES / (style + '.jpg')}",
                  f"size={args.size}", f"iterations={args.iterations}"]
        out = args.out / pair.replace(":", "_x_")
        styles, tvs = grid_values(args.budget)
        run([*common, "loss.style_weight=" + ",".join(f"{v:.4g}" for v in styles),
             "loss.tv_weight=" + ",".join(f"{v:.4g}" for v in tvs)], out / "grid")
        search = [*common, "search=tradeoff", f"hydra.sweeper.n_trials={args.budget}",
                  "hydra.sweeper.seed=0"]
        run(search, out / "search")
        grid, found = distances(out / "grid"), distances(out / "search")
        worst = [max(p[i] for p in grid + found) * 1.1 for i in (0, 1)]
        single = [*search, "hydra.sweeper.objectives=[quality/style_distance]",
                  "hydra.sweeper.direction=minimize", "tracking.checkpoint_every=20"]
        plain_s = run(single, out / "plain")
        pruned_s = run([*single, "hydra.sweeper.pruner=median",
                        f"hydra.sweeper.pruner_startup_trials={args.startup}"], out / "pruned")
        (plain_best, _), (pruned_best, pruned) = (best_and_pruned(out / "plain"),
                                                  best_and_pruned(out / "pruned"))
        rows.append(f"| {pair} | {len(grid)} | {hypervolume(grid, tuple(worst)):.4g} | "
                    f"{len(found)} | {hypervolume(found, tuple(worst)):.4g} | "
                    f"{plain_s:.0f}, {plain_best:.4f} | {pruned_s:.0f}, {pruned_best:.4f}, "
                    f"{pruned} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "search.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
