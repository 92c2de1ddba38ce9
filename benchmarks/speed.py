"""Speed of one Adam iteration: setup, ms per step, memory and achieved GFLOP/s.

    python -m benchmarks.speed --sizes 128 256 512 --precisions float32 bfloat16

Every variant (size x precision x XLA) runs in a fresh process, so setup time and
peak memory are its own. Work per step is counted from the truncated VGG-19: the
forward pass plus the backward pass to the input image (no weight gradients),
which costs the same multiply-adds again, so FLOPs = 2 (FLOP per MAC) x 2 x MACs.
Gram matrices, losses and the Adam update are left out (under 2% at 256 px), so
GFLOP/s is slightly understated. The device's peak is estimated as
cores x GHz x FLOP per cycle per core (--flops-per-cycle, default 32 for fp32 on
two 256-bit FMA pipes, doubled for bfloat16 dot products) unless --peak-gflops
is given. Each variant is logged as an MLflow run in the `benchmarks` experiment.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from style_exp.tables import markdown_table

IMAGES = Path(os.environ.get("STYLE_EXP_IMAGES", Path(__file__).resolve().parents[2]
                             / "shared" / "images"))
COLUMNS = ("device", "size", "image", "precision", "xla", "import_s", "setup_s", "ms_per_iteration",
           "peak_memory_mb", "gflop_per_step", "gflops", "peak_fraction", "final_loss")


def measure(size: int, precision: str, xla: bool, iterations: int, content: str,
            style: str, intra_op: int, inter_op: int) -> dict[str, object]:
    """One variant in this process: time from start to the first step, then steady state."""
    started = time.perf_counter()
    import tensorflow as tf

    from style_exp import device
    from style_exp.images import load_image
    from style_exp.losses import LossWeights
    from style_exp.optim import AdamSettings
    from style_exp.stylize import Problem, build_network, stylize
    from style_exp.weights import IMAGENET_MEAN_RGB, load_weights

    device.configure(intra_op, inter_op)
    imported = time.perf_counter()
    content_image = load_image(content, size)
    loss = LossWeights(5.0, 500.0, 100.0, {"relu4_2": 1.0},
                       {f"relu{i}_1": 0.2 for i in range(1, 6)})
    network = build_network(load_weights(), loss, "max", precision)
    problem = Problem(content_image, [load_image(style, size)], [1.0], loss)
    init = IMAGENET_MEAN_RGB + 0.256 * tf.random.stateless_normal(
        content_image.shape, seed=(0, 0)).numpy()
    first_step: list[float] = []
    result = stylize(problem, network, init, AdamSettings(), iterations, log_every=iterations,
                     jit_compile=xla,
                     callback=lambda _p: first_step or first_step.append(time.perf_counter()))
    height, width = content_image.shape[:2]
    flops = 4 * network.multiply_adds(height, width)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if tf.config.list_physical_devices("GPU"):
        peak_mb = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return {
        "device": device.describe(),
        "size": size,
        "image": f"{width}x{height}",
        "precision": precision,
        "xla": xla,
        "import_s": imported - started,
        "setup_s": first_step[0] - imported,
        "ms_per_iteration": result.ms_per_iteration,
        "peak_memory_mb": peak_mb,
        "gflop_per_step": flops / 1e9,
        "gflops": flops / result.ms_per_iteration / 1e6,
        "final_loss": result.metrics["loss/total"],
    }


def peak_gflops(args: argparse.Namespace, precision: str) -> float:
    """The device's peak for this precision: given, or cores x GHz x FLOP/cycle."""
    if args.peak_gflops:
        return args.peak_gflops * (2 if precision != "float32" else 1)
    cores = len(os.sched_getaffinity(0))
    return cores * args.ghz * args.flops_per_cycle * (2 if precision != "float32" else 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int, default=[128, 256, 512])
    parser.add_argument("--precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--xla", nargs="+", choices=["off", "on"], default=["off"])
    parser.add_argument("--iterations", type=int, default=30,
                        help="Adam steps per variant; the first is setup, the rest are timed")
    parser.add_argument("--content", default=str(IMAGES / "stata.jpg"))
    parser.add_argument("--style", default=str(IMAGES / "dora_maar.jpg"))
    parser.add_argument("--intra-op", type=int, default=0)
    parser.add_argument("--inter-op", type=int, default=0)
    parser.add_argument("--ghz", type=float, default=3.0, help="CPU clock for the peak estimate")
    parser.add_argument("--flops-per-cycle", type=float, default=32.0,
                        help="fp32 FLOP per cycle per core (32: two 256-bit FMA pipes)")
    parser.add_argument("--peak-gflops", type=float, default=None,
                        help="the device's fp32 peak, if known (e.g. a GPU's datasheet value)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/speed"))
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(measure(**json.loads(args.worker))), flush=True)
        return

    rows = []
    for size in args.sizes:
        for precision in args.precisions:
            for xla in args.xla:
                job = {"size": size, "precision": precision, "xla": xla == "on",
                       "iterations": args.iterations, "content": args.content,
                       "style": args.style, "intra_op": args.intra_op,
                       "inter_op": args.inter_op}
                done = subprocess.run([sys.executable, "-m", "benchmarks.speed", "--worker",
                                       json.dumps(job)], capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"size {size} {precision} xla={xla}: failed\n{done.stderr[-2000:]}")
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                row["peak_fraction"] = row["gflops"] / peak_gflops(args, precision)
                row = {column: row[column] for column in COLUMNS}
                rows.append(row)
                print(markdown_table([row], 3).splitlines()[-1], flush=True)
    if not rows:
        sys.exit("no variant finished")
    table = markdown_table(rows, 3)
    assumption = (f"peak: {args.peak_gflops} GFLOP/s fp32 (given)" if args.peak_gflops else
                  f"peak: cores x {args.ghz} GHz x {args.flops_per_cycle} FLOP/cycle fp32, x2 "
                  "for 16-bit")
    print(f"\n{table}\n\n{assumption}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.md").write_text(f"{table}\n\n{assumption}\n")
    (args.out / "speed.json").write_text(json.dumps(rows, indent=2))
    log_to_mlflow(rows, args)


def log_to_mlflow(rows: list[dict[str, object]], args: argparse.Namespace) -> None:
    import mlflow

    from style_exp.config import default_tracking_uri
    from style_exp.tracking import environment_tags, experiment_id

    uri = args.tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = experiment_id(uri, "benchmarks")
    tags = {**environment_tags(), "benchmark": "speed"}
    for row in rows:
        name = f"speed-{row['size']}-{row['precision']}{'-xla' if row['xla'] else ''}"
        with mlflow.start_run(experiment_id=experiment, run_name=name, tags=tags):
            mlflow.log_params({key: row[key] for key in ("size", "image", "precision", "xla")}
                              | {"iterations": args.iterations, "intra_op": args.intra_op,
                                 "inter_op": args.inter_op})
            mlflow.log_metrics({key: float(value) for key, value in row.items()
                                if isinstance(value, (int, float)) and not isinstance(value, bool)
                                and key != "size"})
            mlflow.log_artifact(str(args.out / "speed.md"))


if __name__ == "__main__":
    main()
