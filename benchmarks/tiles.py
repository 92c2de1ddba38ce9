"""Tiled optimisation: exactness, peak memory, time per pixel and final images.

    python -m benchmarks.tiles --exact-size 512 --exact-tile 256 --sizes 512 1024 2048 --tile 512
    python -m benchmarks.tiles --exact-size 0 --sizes --final 1024 --final-iterations 30

1. Exactness: at ``--exact-size`` (stata in the style of starry_night, the paper's
   layers, float32) the loss terms and the gradient computed by tiles against the
   untiled ones, as relative differences (0: skipped).
2. Memory and time: for each of ``--sizes``, a fresh process runs ``--steps`` steps of
   ``--optimizer`` untiled and another tiled, reporting its peak RSS and the median time
   of the steps after the first; time per megapixel shows the overhead of tiling.
   Untiled sizes that would not fit (``--max-untiled``) are skipped. ``--repeats``
   runs the whole list again, interleaved, so a change in the machine's load shows.
   Tiled processes are set up as ``run.py`` sets them up (``configure_for_tiles``).
3. Final images (``--final``): a whole run at that size untiled and one tiled, from the
   photo, in one process: their losses, pixel differences and a side-by-side PNG
   (untiled, tiled, their difference x 8).

Prints the tables, writes them to ``runs/benchmarks/tiles`` and logs one MLflow run to
the ``benchmarks`` experiment.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from style_exp.app.tables import write_tables

IMAGES = Path(os.environ.get("STYLE_EXP_IMAGES", Path(__file__).resolve().parents[2]
                             / "shared" / "images"))


def _problem(size: int):
    from style_exp.engine.images import load_image
    from style_exp.engine.objective import Problem
    from style_exp.spec.loss import LossSettings

    loss = LossSettings().weights()  # the paper's layers
    return Problem(load_image(IMAGES / "stata.jpg", size),
                   [load_image(IMAGES / "starry_night.jpg", size)], [1.0], loss)


def exactness(size: int, tile: int) -> list[dict[str, object]]:
    """Relative differences of each loss term and of the gradient, tiled against untiled."""
    import tensorflow as tf

    from style_exp.engine.objective import build_network, compute_targets, loss_and_gradient
    from style_exp.engine.tiles import TiledLoss
    from style_exp.engine.weights import load_weights

    problem = _problem(size)
    network = build_network(load_weights(), problem.loss, "max")
    image = tf.constant((0.5 * problem.content + 0.5 * 128.0)[None])
    terms, gradient = loss_and_gradient(network, image, compute_targets(network, problem),
                                        problem.loss)
    tiled = TiledLoss(network, problem.loss, problem.content, tile)
    tiled_terms, tiled_gradient = tiled(image, compute_targets(network, problem, tile))
    rows = [{"quantity": f"loss/{name}", "untiled": float(terms[name]),
             "tiled": float(tiled_terms[name]),
             "relative_difference": abs(float(tiled_terms[name]) / float(terms[name]) - 1)}
            for name in ("content", "style", "tv", "total")]
    rows.append({"quantity": "gradient (L2)", "untiled": float(tf.norm(gradient)),
                 "tiled": float(tf.norm(tiled_gradient)),
                 "relative_difference": float(tf.norm(tiled_gradient - gradient)
                                              / tf.norm(gradient))})
    print(f"{size} px, tiles of {tile} px, {len(tiled.tiles)} tiles, halo {tiled.halo} px")
    return rows


def _loop(name: str, history_size: int, log_every: int):
    """The optimiser ``name``, run for every one of its steps."""
    from style_exp.spec.settings import AdamSettings, LBFGSSettings, LoopSettings, StopSettings

    optimizer = AdamSettings() if name == "adam" else LBFGSSettings(history_size=history_size)
    return LoopSettings(optimizer=optimizer, stop=StopSettings(tolerance=0.0), log_every=log_every)


def probe(size: int, tile: int, precision: str, steps: int, optimizer: str,
          history_size: int) -> dict[str, object]:
    """A few steps in this (fresh) process: peak RSS and steady time per step."""
    from style_exp.engine.objective import build_network
    from style_exp.engine.stylize import stylize
    from style_exp.engine.weights import load_weights

    problem = _problem(size)
    network = build_network(load_weights(), problem.loss, "max", precision)
    stamps: list[float] = []
    stylize(problem, network, problem.content, _loop(optimizer, history_size, 1), steps,
            tile=tile, callback=lambda _progress: stamps.append(time.perf_counter()))
    height, width = problem.content.shape[:2]
    step_s = statistics.median(b - a for a, b in itertools.pairwise(stamps[1:]))
    return {"image": f"{width}x{height}", "mode": f"tiles of {tile}" if tile else "untiled",
            "optimizer": optimizer, "precision": precision,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
            "s_per_step": step_s, "s_per_megapixel": step_s / (width * height / 1e6)}


def final_images(size: int, tile: int, iterations: int, optimizer: str, history_size: int,
                 precision: str, out: Path) -> list[dict[str, object]]:
    """Whole runs untiled and tiled from the photo: losses, pixel differences, a PNG."""
    import numpy as np

    from style_exp.engine.images import save_image
    from style_exp.engine.objective import build_network
    from style_exp.engine.stylize import stylize
    from style_exp.engine.weights import load_weights

    problem = _problem(size)
    network = build_network(load_weights(), problem.loss, "max", precision)
    images, rows = [], []
    for tiles in (0, tile):
        result = stylize(problem, network, problem.content,
                         _loop(optimizer, history_size, iterations), iterations, tile=tiles)
        images.append(result.image)
        rows.append({"mode": f"tiles of {tiles}" if tiles else "untiled",
                     **{name: result.metrics[f"loss/{name}"]
                        for name in ("content", "style", "tv", "total")},
                     "s": result.total_s})
    difference = np.abs(images[1] - images[0])
    for row in rows:
        row.update(max_abs_difference=float(difference.max()),
                   mean_abs_difference=float(difference.mean()))
    side_by_side = np.concatenate([*images, np.clip(8.0 * difference, 0, 255)], axis=1)
    print(f"side by side (untiled | tiled | difference x 8): "
          f"{save_image(side_by_side, out / f'final_{size}.png')}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exact-size", type=int, default=512, help="0: skip exactness")
    parser.add_argument("--sizes", type=int, nargs="*", default=[512, 1024, 1536, 2048])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--exact-tile", type=int, default=256,
                        help="tile side for the exactness check (several tiles at --exact-size)")
    parser.add_argument("--max-untiled", type=int, default=2048,
                        help="largest size tried untiled (larger ones would not fit)")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--optimizer", choices=("adam", "lbfgs"), default="adam")
    parser.add_argument("--history-size", type=int, default=10, help="L-BFGS' pairs")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--final", type=int, default=0,
                        help="size of the final-image comparison (0: skipped)")
    parser.add_argument("--final-iterations", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/tiles"))
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        job = json.loads(args.worker)
        if job["tile"]:
            from style_exp.engine.memory import configure_for_tiles

            configure_for_tiles()  # as run.py does for tiled runs, before TensorFlow loads
        print(json.dumps(probe(**job)), flush=True)
        return

    tables = []
    if args.exact_size:
        tables.append((exactness(args.exact_size, args.exact_tile), "exactness",
                       f"{args.exact_size} px, tiles of {args.exact_tile} px, float32, "
                       "the paper's layers"))
    if args.sizes:
        tables.append((measure(args), "memory",
                       f"{args.steps} {args.optimizer} steps per process, {args.precision}; "
                       "time is the median step after the first"))
    if args.final:
        tables.append((final_images(args.final, args.tile, args.final_iterations,
                                    args.optimizer, args.history_size, args.precision,
                                    args.out), f"final_{args.final}",
                       f"{args.final_iterations} {args.optimizer} iterations from the photo, "
                       f"{args.precision}, tiles of {args.tile} px"))
    paths = [path for rows, name, preamble in tables
             for path in write_tables(rows, args.out / name, preamble)]
    for path in paths[1::2]:
        print(path.read_text())
    log_to_mlflow(args, paths)


def measure(args: argparse.Namespace) -> list[dict[str, object]]:
    """Each (size, tiled or not) in a fresh process, the list ``--repeats`` times over."""
    rows = []
    for _, size in itertools.product(range(args.repeats), args.sizes):
        for tile in ([0] if size <= args.max_untiled else []) + [args.tile]:
            job = {"size": size, "tile": tile, "precision": args.precision, "steps": args.steps,
                   "optimizer": args.optimizer, "history_size": args.history_size}
            done = subprocess.run([sys.executable, "-m", "benchmarks.tiles", "--worker",
                                   json.dumps(job)], capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{size} px, tile {tile}: failed\n{done.stderr[-1500:]}", flush=True)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    return rows


def log_to_mlflow(args: argparse.Namespace, paths: list[Path]) -> None:
    import mlflow

    from style_exp.app.schema import default_tracking_uri
    from style_exp.app.tracking import environment_tags, experiment_id

    uri = args.tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment_id(uri, "benchmarks"), run_name="tiles",
                          tags={**environment_tags(), "benchmark": "tiles"}):
        mlflow.log_params({k: v for k, v in vars(args).items() if k not in ("out", "worker")})
        for path in paths:
            mlflow.log_artifact(str(path))


if __name__ == "__main__":
    main()
