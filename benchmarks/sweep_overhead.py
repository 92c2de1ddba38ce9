"""What a sweep's jobs cost besides their steps: one ``run.py -m`` process (basic launcher).

    python -m benchmarks.sweep_overhead -- content=photo.jpg style=painting.jpg size=256
    python -m benchmarks.sweep_overhead --projects ../before . --repeats 2 -- ARGS

Each repeat runs ``python run.py -m loss.style_weight=W1,...,W9 ARGS iterations=20`` once
per checkout, interleaved (A, B, A, B) so both see the same load, each into a fresh
SQLite store (its tables created before the timing starts: a user's store exists), and
reads the runs back: a job's step time is its ``time/steps`` times its
``time/per_iteration_ms`` (the median step after the first); a later job's own overhead
is the time from the previous run's end to its own end, less its step time (everything
it pays besides its steps: Hydra's next job, preflight, its MLflow run, targets, quality
measurements, images). An L-BFGS iteration may evaluate the objective more than once
(the first evaluates the start too, a line search halves its step), so the table also
counts the steps by evaluations: ``lbfgs/evaluations`` times the median step (one
evaluation), and the overhead beyond that. Prints one row per repeat and checkout with
the load average.

``--worker`` also hands each sweep to a resident worker (``python -m style_exp.worker
start``, one per checkout, started before the repeats and not timed), interleaved with
the cold sweeps (``STYLE_EXP_WORKER=0``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from mlflow.tracking import MlflowClient

from style_exp.app.handoff import DIR_ENV, WORKER_ENV

PROJECT = Path(__file__).resolve().parents[1]
WEIGHTS = "1e3,2e3,5e3,1e4,2e4,5e4,1e5,2e5,5e5"  # nine jobs


def sweep(project: Path, run_args: list[str], scratch: Path,
          env: dict[str, str]) -> dict[str, float]:
    """One sweep in ``project``: its wall time, summed step time and later jobs' overhead."""
    uri = f"sqlite:///{scratch / 'mlflow.db'}"
    command = [sys.executable, "run.py", "-m", f"loss.style_weight={WEIGHTS}",
               "iterations=20", "progress=false", f"tracking.uri={uri}",
               f"hydra.sweep.dir={scratch / 'sweep'}", *run_args]
    MlflowClient(uri).search_experiments()  # a user's store exists: its tables are not timed
    load = os.getloadavg()[0]
    started = time.perf_counter()
    subprocess.run(command, cwd=project, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - started
    client = MlflowClient(uri)
    runs = sorted(client.search_runs([client.get_experiment_by_name("style_exp").experiment_id]),
                  key=lambda run: run.info.start_time)
    step_s = [run.data.metrics["time/per_iteration_ms"] / 1e3 for run in runs]
    steps = [run.data.metrics["time/steps"] * step for run, step in zip(runs, step_s, strict=True)]
    evaluations = [run.data.metrics.get("lbfgs/evaluations", run.data.metrics["time/steps"])
                   * step for run, step in zip(runs, step_s, strict=True)]
    ends = [run.info.end_time / 1e3 for run in runs]

    def later_overheads(work: list[float]) -> list[float]:
        return [ends[i] - ends[i - 1] - work[i] for i in range(1, len(runs))]

    by_steps, by_evaluations = later_overheads(steps), later_overheads(evaluations)
    return {"load": load, "jobs": len(runs), "wall_s": wall, "steps_s": sum(steps),
            "wall_minus_steps_s": wall - sum(steps),
            "later_job_overhead_s": statistics.median(by_steps),
            "later_overhead_min_s": min(by_steps), "later_overhead_max_s": max(by_steps),
            "evaluations_s": sum(evaluations),
            "wall_minus_evaluations_s": wall - sum(evaluations),
            "later_job_overhead_by_evaluations_s": statistics.median(by_evaluations)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--projects", nargs="+", default=[str(PROJECT)])
    parser.add_argument("--worker", action="store_true",
                        help="also hand each sweep to a resident worker")
    parser.add_argument("args", nargs="*", help="run.py's arguments (after --)")
    args = parser.parse_args()
    modes = ("cold", "worker") if args.worker else ("cold",)
    print("| repeat | checkout | load | jobs | wall s | steps s | wall - steps | "
          "later job overhead (median, min-max) s | evaluations s | wall - evaluations | "
          "later job overhead beyond its evaluations |\n" + "|---" * 11 + "|")
    with tempfile.TemporaryDirectory(prefix="so") as scratch, contextlib.ExitStack() as kept:
        envs = {(project, mode): {**os.environ, WORKER_ENV: "0"} if mode == "cold" else
                kept.enter_context(_worker(Path(project).resolve(), Path(scratch) / f"w{i}"))
                for i, project in enumerate(args.projects) for mode in modes}
        for repeat in range(args.repeats):
            for index, (project, mode) in enumerate(envs):
                where = Path(scratch) / f"{repeat}-{index}"
                where.mkdir()
                row = sweep(Path(project).resolve(), args.args, where, envs[project, mode])
                print(f"| {repeat + 1} | {project} {mode} | {row['load']:.1f} | {row['jobs']} | "
                      f"{row['wall_s']:.1f} | {row['steps_s']:.1f} | "
                      f"{row['wall_minus_steps_s']:.1f} | {row['later_job_overhead_s']:.2f} "
                      f"({row['later_overhead_min_s']:.2f}-{row['later_overhead_max_s']:.2f}) | "
                      f"{row['evaluations_s']:.1f} | {row['wall_minus_evaluations_s']:.1f} | "
                      f"{row['later_job_overhead_by_evaluations_s']:.2f} |",
                      flush=True)


@contextlib.contextmanager
def _worker(project: Path, directory: Path) -> Iterator[dict[str, str]]:
    """A resident worker of ``project``'s serving from ``directory``: the sweeps' environment."""
    env = {**os.environ, DIR_ENV: str(directory)}
    command = [sys.executable, "-m", "style_exp.worker"]
    subprocess.run([*command, "start", "--idle-min", "60"], cwd=project, env=env, check=True)
    try:
        yield env
    finally:
        subprocess.run([*command, "stop"], cwd=project, env=env, check=True)


if __name__ == "__main__":
    main()
