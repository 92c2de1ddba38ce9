"""The seed paper's own code as a step server for ``benchmarks/speed.py --seed-code``.

    SEED_PYTHON seed_steps.py SEED_DIR NETWORK.mat CONTENT STYLE WIDTH HEIGHT

Imports the seed code's ``stylize`` unmodified from SEED_DIR (run with the interpreter
of the environment ``run-seed.sh`` builds) and drives its own Adam loop at the seed
objective (content 5, style 500, TV 100, lr 10) on the content resized to
WIDTH x HEIGHT. Prints ``ready`` after the graph is built and two steps are done; then,
for each line K read from stdin, runs K steps and prints the wall milliseconds per step.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time

import numpy as np
from PIL import Image


def main() -> None:
    seed_dir, network, content_path, style_path = sys.argv[1:5]
    width, height = int(sys.argv[5]), int(sys.argv[6])
    sys.path.insert(0, seed_dir)
    import stylize  # the seed code's module, as it is

    content = np.array(Image.open(content_path).convert("RGB").resize((width, height)), np.float32)
    style_image = Image.open(style_path).convert("RGB")
    # The seed code scales styles to the content's width (its default --style-scales 1).
    style_size = (width, round(style_image.height * width / style_image.width))
    style = np.array(style_image.resize(style_size), np.float32)
    steps = stylize.stylize(
        network=network, initial=None, initial_noiseblend=1.0, content=content, styles=[style],
        preserve_colors=False, iterations=10**9, content_weight=5.0, content_weight_blend=1.0,
        style_weight=500.0, style_layer_weight_exp=1.0, style_blend_weights=[1.0],
        tv_weight=100.0, learning_rate=10.0, beta1=0.9, beta2=0.999, epsilon=1e-8,
        pooling="max")
    chatter = io.StringIO()  # the seed loop prints a line per step
    with contextlib.redirect_stdout(chatter):
        next(steps), next(steps)
    print("ready", flush=True)
    for line in sys.stdin:
        count = int(line)
        with contextlib.redirect_stdout(chatter):
            started = time.perf_counter()
            for _ in range(count):
                next(steps)
            elapsed = time.perf_counter() - started
        chatter.seek(0), chatter.truncate()
        print(f"{1000 * elapsed / count:.3f}", flush=True)


if __name__ == "__main__":
    main()
