"""Quality parity of bfloat16 against float32 on real pairs, scored on one float32 scale.

    python -m benchmarks.precision --size 256 --iterations 100

For each content/style pair, L-BFGS runs the same number of iterations from the same
noise once with the network in float32 and once in bfloat16, in this process. Each
final image is then scored by the seed objective (content 5, style 500, TV 100) with
the float32 network, so both precisions are judged by the same yardstick; the table
gives the losses, their ratio bf16/fp32 and the wall time of each run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from style_exp.app.tables import markdown_table
from style_exp.engine.images import load_image
from style_exp.engine.losses import loss_terms
from style_exp.engine.objective import Problem, build_network, compute_targets
from style_exp.engine.stylize import stylize
from style_exp.engine.weights import IMAGENET_MEAN_RGB, load_weights
from style_exp.spec.loss import LossSettings
from style_exp.spec.settings import NEVER_STOP, LBFGSSettings, LoopSettings

IMAGES = Path(os.environ.get("STYLE_EXP_IMAGES", Path(__file__).resolve().parents[2]
                             / "shared" / "images"))
PAIRS = (("stata.jpg", "dora_maar.jpg"), ("tubingen.jpg", "starry_night.jpg"),
         ("tubingen.jpg", "the_scream.jpg"))
SEED_LOSS = LossSettings().weights()  # the seed code's weights and layers are the defaults


def seed_objective(network, problem: Problem, image: np.ndarray) -> float:
    """The seed's total loss of ``image``, computed by the float32 network."""
    batch = tf.constant(image[None], tf.float32)
    terms = loss_terms(network(batch), batch, compute_targets(network, problem), SEED_LOSS)
    return float(terms["total"])


def compare(content: str, style: str, size: int, iterations: int, weights) -> dict[str, object]:
    problem = Problem(load_image(IMAGES / content, size), [load_image(IMAGES / style, size)],
                      [1.0], SEED_LOSS)
    init = IMAGENET_MEAN_RGB + np.random.default_rng(0).normal(
        0, 0.256, problem.content.shape).astype(np.float32)
    reference = build_network(weights, SEED_LOSS, "max", "float32")
    row: dict[str, object] = {"pair": f"{Path(content).stem}+{Path(style).stem}"}
    for precision in ("float32", "bfloat16"):
        network = build_network(weights, SEED_LOSS, "max", precision)
        started = time.perf_counter()
        loop = LoopSettings(optimizer=LBFGSSettings(), stop=NEVER_STOP, log_every=iterations)
        result = stylize(problem, network, init, loop, iterations)
        row[f"{precision}_s"] = time.perf_counter() - started
        row[f"{precision}_loss"] = seed_objective(reference, problem, result.image)
    row["ratio"] = row["bfloat16_loss"] / row["float32_loss"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--iterations", type=int, default=100)
    args = parser.parse_args()
    weights = load_weights()
    rows = []
    for content, style in PAIRS:
        rows.append(compare(content, style, args.size, args.iterations, weights))
        print(markdown_table(rows[-1:], 4).splitlines()[-1], flush=True)
    print(f"\n{markdown_table(rows, 4)}")


if __name__ == "__main__":
    main()
