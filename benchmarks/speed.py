"""Speed of one Adam iteration: setup, ms per step, memory and achieved GFLOP/s.

    python -m benchmarks.speed --sizes 128 256 512 --precisions float32 bfloat16
    python -m benchmarks.speed --sizes 256 --seed-code ../shared/seedcode

What is compared with what: every variant (size x precision x XLA) optimises the same
content and style (``--content``/``--style``) resized so the longest side is ``size``,
for ``--iterations`` Adam steps. ``setup_s`` runs from the imports to the end of the first
step (targets and tracing included); ``ms_per_iteration`` is the median over chunks of
``--chunk`` steps after it, each chunk ending in a host read as a logged step does.

Every variant runs in a fresh process, so setup time and peak memory are its own. Work
per step is counted from the truncated VGG-19: the forward pass plus the backward pass
to the input image (no weight gradients), which costs the same multiply-adds again, so
FLOPs = 2 (FLOP per MAC) x 2 x MACs. Gram matrices, losses and the Adam update are left
out (about 7% at 256 px), so GFLOP/s is slightly understated. The device's peak is
estimated as cores x GHz x FLOP per cycle per core (--flops-per-cycle, default 32 for
fp32 on two 256-bit FMA pipes, doubled for bfloat16 dot products) unless --peak-gflops
is given. Each variant is logged as an MLflow run in the `benchmarks` experiment.

``--seed-code DIR`` instead compares against the seed paper's own TensorFlow code
(imported unmodified from DIR by ``benchmarks/seed_steps.py``, in the environment its
``run-seed.sh`` builds): for each size and precision, this project's step and the seed
code's step run in two live processes at the same image size (W x H), and the benchmark
alternates between them chunk by chunk (random order in each round), so both see the
same load on a shared machine. It reports both medians and the median of the per-round
ratios. The seed code only has float32; the objective is the seed's (content 5,
style 500, TV 100) in both; only style targets' sizes differ (computed once, untimed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from style_exp.app.tables import markdown_table

IMAGES = Path(os.environ.get("STYLE_EXP_IMAGES", Path(__file__).resolve().parents[2]
                             / "shared" / "images"))
SEED_CACHE = Path(os.environ.get("SEEDCODE_CACHE", Path.home() / ".cache" / "seedcode"))
COLUMNS = ("device", "size", "image", "precision", "xla", "import_s", "setup_s", "ms_per_iteration",
           "peak_memory_mb", "gflop_per_step", "gflops", "peak_fraction", "final_loss")


def measure(size: int, precision: str, xla: bool, iterations: int, chunk: int, content: str,
            style: str, intra_op: int, inter_op: int) -> dict[str, object]:
    """One variant in this process: time from start to the first step, then steady state."""
    started = time.perf_counter()
    import tensorflow as tf

    from style_exp.engine import device
    from style_exp.engine.stylize import stylize
    from style_exp.spec.settings import AdamSettings, LoopSettings

    device.configure(intra_op, inter_op)
    imported = time.perf_counter()
    problem, network, init = seed_problem(size, precision, content, style)
    first_step: list[float] = []
    result = stylize(problem, network, init,
                     LoopSettings(optimizer=AdamSettings(), log_every=chunk, xla=xla), iterations,
                     callback=lambda _p: first_step or first_step.append(time.perf_counter()))
    height, width = problem.content.shape[:2]
    flops = 4 * network.multiply_adds(height, width)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if tf.config.list_physical_devices("GPU"):
        peak_mb = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
    return {
        "device": device.describe_device(),
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


def seed_problem(size: int, precision: str, content: str, style: str):
    """The seed objective on one pair, the network and the seed's initial noise."""
    import numpy as np

    from style_exp.engine.images import load_image
    from style_exp.engine.objective import Problem, build_network
    from style_exp.engine.weights import IMAGENET_MEAN_RGB, load_weights
    from style_exp.spec.loss import LossSettings

    loss = LossSettings().weights()  # the seed code's weights and layers are the defaults
    problem = Problem(load_image(content, size), [load_image(style, size)], [1.0], loss)
    init = IMAGENET_MEAN_RGB + np.random.default_rng(0).normal(
        0, 0.256, problem.content.shape).astype(np.float32)
    return problem, build_network(load_weights(), loss, "max", precision), init


def serve_steps(size: int, precision: str, content: str, style: str) -> None:
    """This project's Adam loop as a step server: ``ready``, then K steps per stdin line."""
    from style_exp.engine import device
    from style_exp.engine.progress import Progress
    from style_exp.engine.stylize import stylize
    from style_exp.spec.settings import AdamSettings, LoopSettings

    device.configure()
    problem, network, init = seed_problem(size, precision, content, style)
    chunk = int(sys.stdin.readline())
    last: list[float] = []

    def next_chunk(progress: Progress) -> None:
        now = time.perf_counter()
        print(f"{1000 * (now - last[0]) / chunk:.3f}" if last else "ready", flush=True)
        if progress.step > 1 and not sys.stdin.readline():
            raise SystemExit(0)
        last[:] = [time.perf_counter()]

    # Reported steps are 1, then every chunk: the first chunk after 'ready' is one short,
    # so the driver discards it.
    stylize(problem, network, init, LoopSettings(optimizer=AdamSettings(), log_every=chunk), 10**9,
            callback=next_chunk)


def side_by_side(args: argparse.Namespace) -> list[dict[str, object]]:
    """This project's step against the seed code's, alternating chunk by chunk."""
    from style_exp.engine.images import load_image

    seed_python, network = SEED_CACHE / "venv" / "bin" / "python", \
        SEED_CACHE / "imagenet-vgg-verydeep-19.mat"
    if not seed_python.is_file() or not network.is_file():
        sys.exit(f"{SEED_CACHE} has no seed environment: run {args.seed_code}/run-seed.sh once")
    rows = []
    for size in args.sizes:
        height, width = load_image(args.content, size).shape[:2]
        for precision in args.precisions:
            job = json.dumps({"size": size, "precision": precision, "content": args.content,
                              "style": args.style})
            servers = {
                "ours": [sys.executable, "-m", "benchmarks.speed", "--serve", job],
                "seed": [str(seed_python), str(Path(__file__).with_name("seed_steps.py")),
                         str(args.seed_code), str(network), args.content, args.style,
                         str(width), str(height)],
            }
            times = alternate(servers, args.chunk, args.rounds)
            ours, seed = statistics.median(times["ours"]), statistics.median(times["seed"])
            rows.append({
                "size": size, "image": f"{width}x{height}", "precision": precision,
                "chunks": f"{args.rounds} x {args.chunk} steps", "ours_ms": ours,
                "seed_float32_ms": seed, "ratio_of_medians": ours / seed,
                "median_paired_ratio": statistics.median(
                    a / b for a, b in zip(times["ours"], times["seed"], strict=True)),
            })
            print(markdown_table(rows[-1:], 3).splitlines()[-1], flush=True)
    return rows


def alternate(commands: dict[str, list[str]], chunk: int, rounds: int) -> dict[str, list[float]]:
    """ms per step of each server over ``rounds`` chunks, the servers taking turns."""
    servers = {name: subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
               for name, command in commands.items()}

    def send_chunk(server: subprocess.Popen) -> None:
        server.stdin.write(f"{chunk}\n")
        server.stdin.flush()

    def ask(server: subprocess.Popen) -> float:
        send_chunk(server)
        return float(server.stdout.readline())

    try:
        send_chunk(servers["ours"])  # this project's server reads its chunk size first
        for name, server in servers.items():
            if server.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the {name} step server did not start")
            ask(server)  # warm-up chunk (ours: one step short), not counted
        times: dict[str, list[float]] = {name: [] for name in servers}
        for _ in range(rounds):
            for name in random.sample(list(servers), len(servers)):
                times[name].append(ask(servers[name]))
        return times
    finally:
        for server in servers.values():
            server.kill()
            server.wait()


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
    parser.add_argument("--chunk", type=int, default=5,
                        help="steps per timed chunk (ms per step is the median over chunks)")
    parser.add_argument("--seed-code", type=Path, default=None,
                        help="compare side by side with the seed code in this directory")
    parser.add_argument("--rounds", type=int, default=20,
                        help="--seed-code: chunks per side, alternating")
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
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(measure(**json.loads(args.worker))), flush=True)
        return
    if args.serve:
        serve_steps(**json.loads(args.serve))
        return
    if args.seed_code:
        rows = side_by_side(args)
        print(f"\n{markdown_table(rows, 3)}")
        return

    rows = []
    for size in args.sizes:
        for precision in args.precisions:
            for xla in args.xla:
                job = {"size": size, "precision": precision, "xla": xla == "on",
                       "iterations": args.iterations, "chunk": args.chunk,
                       "content": args.content,
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

    from style_exp.app.schema import default_tracking_uri
    from style_exp.app.tracking import environment_tags, experiment_id

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
