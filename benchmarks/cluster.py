"""Wall time of one sweep of small jobs: one after another, joblib, and a local Ray.

    python -m benchmarks.cluster [--jobs 8] [--size 128] [--iterations 50]

Each mode runs the same ``run.py -m seed=0..N-1`` sweep into its own SQLite store and
reports the wall time of the whole command and how many runs ended FINISHED. Run by
hand on a quiet machine; prints a Markdown table and writes it to
``runs/benchmarks/cluster.md``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

PROJECT = Path(__file__).resolve().parent.parent
PARALLEL = 2  # jobs at once for joblib and Ray: one per core here

MODES = {
    "serial (basic launcher)": [],
    f"joblib, {PARALLEL} processes": ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={PARALLEL}"],
    f"local Ray, {PARALLEL} CPUs": [
        "hydra/launcher=ray", f"+hydra.launcher.ray.init.num_cpus={PARALLEL}",
        f"hydra.launcher.ray.init.object_store_memory={100 * 2**20}",
        "+hydra.launcher.ray.init.include_dashboard=false"],
}


def run_mode(extra: list[str], jobs: int, size: int, iterations: int,
             workdir: Path) -> tuple[float, int]:
    """Wall seconds of the sweep and its number of FINISHED runs."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    command = [sys.executable, str(PROJECT / "run.py"), "-m", *extra,
               "seed=" + ",".join(str(s) for s in range(jobs)), f"size={size}",
               f"iterations={iterations}", "progress=false", f"tracking.uri={uri}",
               f"hydra.sweep.dir={workdir / 'sweep'}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_AUTH_MODE": "disabled"}  # loopback only; leave no token in ~/.ray
    started = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("style_exp")
    runs = client.search_runs([experiment.experiment_id]) if experiment else []
    return wall, sum(run.info.status == "FINISHED" for run in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args(argv)
    rows = [f"| launcher ({args.jobs} jobs, {args.size} px, {args.iterations} iterations) "
            "| wall s | s per job | finished |", "|---|---|---|---|"]
    for name, extra in MODES.items():
        with tempfile.TemporaryDirectory() as workdir:
            wall, finished = run_mode(extra, args.jobs, args.size, args.iterations,
                                      Path(workdir))
        rows.append(f"| {name} | {wall:.1f} | {wall / args.jobs:.1f} | "
                    f"{finished}/{args.jobs} |")
        print(rows[-1], flush=True)
    table = "\n".join(rows) + "\n"
    out = PROJECT / "runs" / "benchmarks" / "cluster.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
