"""Per-frame setup of a video with the compiled step reused across frames, and without.

    python -m benchmarks.frame_setup [--frames 8] [--repeats 8] [--iterations 20]

The frames of a pan cut from a real photo are stylised one after another in one
process, alternating a shared ``Workspace`` (the step traced for the first frame and
reused, as ``stylize_video`` does) with a fresh one per frame (traced every frame).
Alternating keeps both modes under the same load. The table gives the median setup
(targets, tracing, first step) and the median whole frame of each mode.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from benchmarks.video import IMAGES, make_clips
from style_exp.app.tables import write_tables
from style_exp.engine import device
from style_exp.engine.images import load_image
from style_exp.engine.objective import Problem, Workspace, build_network
from style_exp.engine.stylize import stylize
from style_exp.engine.weights import load_weights
from style_exp.spec.loss import LossSettings
from style_exp.spec.settings import NEVER_STOP, LBFGSSettings, LoopSettings

PROJECT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo", default=str(IMAGES / "tubingen.jpg"))
    parser.add_argument("--style", default=str(IMAGES / "starry_night.jpg"))
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=8, help="frames per mode")
    parser.add_argument("--iterations", type=int, default=20, help="L-BFGS steps per frame")
    parser.add_argument("--precision", default="bfloat16")
    args = parser.parse_args()
    device.configure()
    frames = make_clips(load_image(args.photo), args.width, args.height, args.frames,
                        [2])["pan2px"]
    style = load_image(args.style, max(args.width, args.height))
    loss = LossSettings().weights()
    network = build_network(load_weights(), loss, "max", args.precision)
    loop = LoopSettings(optimizer=LBFGSSettings(), stop=NEVER_STOP)
    shared = Workspace()

    def frame(index: int, workspace: Workspace | None) -> tuple[float, float]:
        content = frames[index % len(frames)]
        result = stylize(Problem(content, [style], [1.0], loss), network, content, loop,
                         args.iterations, workspace=workspace, require_progress=False)
        return result.setup_s, result.total_s

    frame(0, shared)  # the first frame traces the step the shared mode reuses
    times: dict[str, list[tuple[float, float]]] = {"reused": [], "traced per frame": []}
    for index in range(1, 2 * args.repeats + 1):
        reuse = index % 2 == 1
        times["reused" if reuse else "traced per frame"].append(
            frame(index, shared if reuse else None))
    rows = [{"step": mode, "setup_s": statistics.median(s for s, _ in measured),
             "frame_s": statistics.median(t for _, t in measured), "frames": len(measured)}
            for mode, measured in times.items()]
    preamble = (f"{args.width}x{args.height}, L-BFGS, {args.precision}, {args.iterations} "
                "iterations per frame; medians")
    _, markdown = write_tables(rows, PROJECT / "runs" / "benchmarks" / "frame_setup", preamble)
    print(markdown.read_text())


if __name__ == "__main__":
    main()
