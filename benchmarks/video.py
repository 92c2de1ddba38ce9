"""Temporal coherence of the video modes on clips whose true motion is known.

    python -m benchmarks.video [--frames 8] [--pans 1 3] [--frame-lr 3] [--out DIR]

Two kinds of clip are cut from a real photograph: a static camera (the same frame
with a little sensor noise each time) and slow pans (the crop window moves a few
pixels per frame). Each is stylised in every mode at the same iteration budget; the
table gives, per mode and clip, the mean temporal error (stylised frame t against
frame t-1 warped along the input's flow, over trusted pixels, 0..255), the mean
per-frame style loss and its ratio to ``independent``'s, and the seconds per frame
after the first. A strip of the frames of each run is saved for looking at.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np

from style_exp.app.schema import default_tracking_uri
from style_exp.app.tables import write_tables
from style_exp.app.tracking import environment_tags, experiment_id
from style_exp.engine.images import load_image, resize, save_image
from style_exp.engine.objective import Problem, build_network
from style_exp.engine.video import Frame, FrameStore, stylize_video
from style_exp.engine.weights import IMAGENET_MEAN_RGB, load_weights
from style_exp.spec.loss import LossSettings, LossWeights
from style_exp.spec.settings import VIDEO_INITS, AdamSettings, LoopSettings, VideoSettings

IMAGES = Path(os.environ.get("STYLE_EXP_IMAGES", Path(__file__).resolve().parents[2]
                             / "shared" / "images"))


def make_clips(photo: np.ndarray, width: int, height: int, frames: int,
               pans: list[int]) -> dict[str, list[np.ndarray]]:
    """``static`` and ``pan<k>px`` clips cut from ``photo``, scaled to fit the height."""
    scale = 1.3 * height / photo.shape[0]
    picture = resize(photo, (round(photo.shape[1] * scale), round(photo.shape[0] * scale)))
    top = (picture.shape[0] - height) // 2
    needed = width + max(pans, default=0) * (frames - 1)
    if picture.shape[1] < needed:
        raise SystemExit(f"the photo is too narrow for a {max(pans)} px/frame pan of "
                         f"{frames} frames at {width}x{height}")
    rng = np.random.default_rng(0)
    still = picture[top:top + height, :width]
    clips = {"static": [np.clip(still + rng.normal(0, 2, still.shape), 0, 255).astype(
        np.float32) for _ in range(frames)]}
    for step in pans:
        clips[f"pan{step}px"] = [picture[top:top + height, t * step:t * step + width]
                                 for t in range(frames)]
    return clips


@dataclass(frozen=True, eq=False)
class NoiseStarted:
    """The ``FrameMaker``: each frame in the style of ``style``, its optimised image as the
    output frame, an independent frame started from the paper's noise."""

    style: np.ndarray
    loss: LossWeights

    def problem_for(self, index: int, frame: np.ndarray) -> Problem:
        return Problem(frame, [self.style], [1.0], self.loss)

    def output_image(self, image: np.ndarray, frame: np.ndarray) -> np.ndarray:
        return image

    def start_image(self, index: int, frame: np.ndarray) -> np.ndarray:
        noise = np.random.default_rng(index).normal(0, 0.256, frame.shape)
        return (IMAGENET_MEAN_RGB + noise).astype(np.float32)


def run_mode(frames: list[np.ndarray], style: np.ndarray, loss: LossWeights, network,
             settings: VideoSettings, lr: float) -> list[Frame]:
    with tempfile.TemporaryDirectory() as workdir:
        return stylize_video(frames, NoiseStarted(style, loss), network,
                             LoopSettings(optimizer=AdamSettings(lr=lr)), settings,
                             FrameStore(Path(workdir)), settings.first_frame_iterations)


def summarise(clip: str, mode: str, done: list[Frame], baseline_style: float | None
              ) -> dict[str, object]:
    later = done[1:]
    style = float(np.mean([f.metrics["loss/style"] for f in later]))
    return {
        "clip": clip,
        "mode": mode,
        "temporal_error": float(np.mean([f.metrics["video/temporal_error"] for f in later])),
        "style_loss": style,
        "style_vs_independent": style / baseline_style if baseline_style else 1.0,
        "s_per_frame": float(np.mean([f.metrics["time/frame_s"] for f in later])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photo", default=str(IMAGES / "stata.jpg"))
    parser.add_argument("--style", default=str(IMAGES / "starry_night.jpg"))
    parser.add_argument("--width", type=int, default=96)
    parser.add_argument("--height", type=int, default=72)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--pans", nargs="+", type=int, default=[1, 3], help="px per frame")
    parser.add_argument("--modes", nargs="+", choices=VIDEO_INITS, default=list(VIDEO_INITS))
    parser.add_argument("--first-iterations", type=int, default=150)
    parser.add_argument("--frame-iterations", type=int, default=40)
    parser.add_argument("--lr", type=float, default=10.0)
    parser.add_argument("--frame-lr", type=float, default=VideoSettings.frame_lr,
                        help="Adam lr for frames started from the previous one")
    parser.add_argument("--temporal-weight", type=float, default=1e4)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/video"))
    parser.add_argument("--tracking-uri", default=None)
    args = parser.parse_args()

    clips = make_clips(load_image(args.photo), args.width, args.height, args.frames, args.pans)
    style = load_image(args.style, max(args.width, args.height))
    loss = LossSettings().weights()
    network = build_network(load_weights(), loss, "max")
    rows = []
    for clip, frames in clips.items():
        baseline = None
        for mode in args.modes:
            settings = VideoSettings(init=mode, temporal_weight=args.temporal_weight,
                                     first_frame_iterations=args.first_iterations,
                                     frame_iterations=args.frame_iterations,
                                     frame_lr=args.frame_lr)
            done = run_mode(frames, style, loss, network, settings, args.lr)
            row = summarise(clip, mode, done, baseline)
            baseline = baseline or (row["style_loss"] if mode == "independent" else None)
            rows.append(row)
            save_image(np.concatenate([f.image for f in done], axis=1),
                       args.out / f"{clip}_{mode}.png")
            print(" | ".join(f"{v:.4g}" if isinstance(v, float) else str(v)
                             for v in row.values()), flush=True)
    preamble = (f"{args.frames} frames of {args.width}x{args.height}, Adam lr {args.lr} "
                f"(warm-started frames {args.frame_lr or args.lr}), {args.first_iterations} "
                f"iterations for the first frame and {args.frame_iterations} for each next one, "
                f"temporal weight {args.temporal_weight:g}; errors and losses are means over "
                "frames 1..n-1")
    _, md_path = write_tables(rows, args.out / "video", preamble)
    print(md_path.read_text())
    uri = args.tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=experiment_id(uri, "benchmarks"),
                          run_name="video-coherence", tags=environment_tags()):
        mlflow.log_params({k: v for k, v in vars(args).items() if k not in ("out",)})
        for row in rows:
            prefix = f"{row['clip']}.{row['mode']}"
            mlflow.log_metrics({f"{prefix}.temporal_error": row["temporal_error"],
                                f"{prefix}.style_loss": row["style_loss"],
                                f"{prefix}.s_per_frame": row["s_per_frame"]})
        mlflow.log_artifacts(str(args.out))


if __name__ == "__main__":
    main()
