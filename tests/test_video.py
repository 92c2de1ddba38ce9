"""Video: clip I/O, optical flow and warping, the three frame modes, resume and bad clips."""

import subprocess
import sys

import cv2
import imageio_ffmpeg
import numpy as np
import pytest
from conftest import run_config, stripes_image
from mlflow.tracking import MlflowClient
from PIL import Image

from style_exp.app import preflight, runs
from style_exp.app.execute import execute
from style_exp.app.parse import parse
from style_exp.engine import video
from style_exp.engine.flow import consistency_mask, optical_flow, temporal_error, warp
from style_exp.engine.images import to_uint8
from style_exp.engine.objective import Problem, build_network
from style_exp.engine.progress import Result
from style_exp.engine.video import FrameStore, Motion, stylize_video
from style_exp.engine.videoio import VideoError, open_clip, write_video
from style_exp.engine.weights import IMAGENET_MEAN_RGB
from style_exp.spec.loss import LossSettings
from style_exp.spec.runspec import Provenance
from style_exp.spec.settings import AdamSettings, ConfigError, LoopSettings, VideoSettings

LOSS = LossSettings().weights()
HEIGHT, WIDTH = 32, 40


def scene(width: int = 96) -> np.ndarray:
    """A wide picture to pan across, textured in both directions so flow is well posed."""
    rng = np.random.default_rng(3)
    blobs = cv2.GaussianBlur(rng.uniform(0, 255, (HEIGHT, width, 3)).astype(np.float32),
                             (0, 0), 1.5)
    return (blobs - blobs.min()) / (blobs.max() - blobs.min()) * 255


def pan(frames: int, pixels_per_frame: int) -> list[np.ndarray]:
    """Camera moving right: the picture moves left by ``pixels_per_frame`` each frame."""
    picture = scene()
    return [picture[:, t * pixels_per_frame:t * pixels_per_frame + WIDTH] for t in range(frames)]


def static(frames: int) -> list[np.ndarray]:
    """The same frame with a little sensor noise."""
    rng = np.random.default_rng(1)
    frame = scene()[:, :WIDTH]
    return [np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.float32)
            for _ in range(frames)]


def tone(path, seconds: float = 2.0):
    exe = imageio_ffmpeg.get_ffmpeg_exe()
    subprocess.run([exe, "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    f"sine=frequency=440:duration={seconds}", str(path)], check=True)
    return path


def test_video_round_trip_keeps_frames_fps_and_sound(tmp_path):
    frames = pan(6, 2)
    sound = tone(tmp_path / "tone.m4a")
    path = write_video(frames, tmp_path / "clip.mp4", fps=12, audio_from=sound)
    clip = open_clip(path, longest_side=WIDTH)
    assert (clip.count, clip.fps, clip.size, clip.has_audio) == (6, 12.0, (WIDTH, HEIGHT), True)
    read = list(clip.frames())
    assert len(read) == 6
    assert np.mean(np.abs(read[3] - frames[3])) < 8  # H.264 is lossy, but close
    strided = open_clip(path, longest_side=20, stride=2, max_frames=2)
    assert (strided.count, strided.fps, strided.size) == (2, 6.0, (20, 16))
    assert len(list(strided.frames())) == 2
    again = write_video(read, tmp_path / "again.mp4", fps=12, audio_from=path)
    assert open_clip(again, WIDTH).has_audio
    assert not open_clip(write_video(read, tmp_path / "mute.mp4", fps=12), WIDTH).has_audio


def test_frames_directory_is_read_in_natural_order(tmp_path):
    frames = [to_uint8(frame) for frame in pan(11, 1)]
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / f"f{index}.png")
    clip = open_clip(tmp_path, longest_side=WIDTH, fps=5)
    assert (clip.count, clip.fps, clip.has_audio) == (11, 5.0, False)
    assert [p.name for p in clip.frame_files][:3] == ["f0.png", "f1.png", "f2.png"]
    assert np.array_equal(list(clip.frames())[10], frames[10])


@pytest.mark.parametrize("method", ["dis", "farneback"])
def test_flow_recovers_a_translation(method):
    picture = scene()
    previous, current = picture[:, 10:10 + WIDTH], picture[:, 13:13 + WIDTH]
    backward = optical_flow(current, previous, method)  # where frame t's pixels were
    inner = backward[4:-4, 4:-8]
    assert np.median(inner[..., 0]) == pytest.approx(3.0, abs=0.3)
    assert np.median(np.abs(inner[..., 1])) < 0.3


def test_warp_and_mask_on_known_motion():
    picture = scene()
    previous, current = picture[:, 10:10 + WIDTH], picture[:, 13:13 + WIDTH]
    backward = np.zeros((HEIGHT, WIDTH, 2), np.float32)
    backward[..., 0] = 3.0
    forward = -backward
    warped = warp(previous, backward)
    mask = consistency_mask(forward, backward)
    # The 3 rightmost columns of frame t were outside frame t-1: not trusted.
    assert mask[:, -3:].max() == 0 and mask[:, :-4].min() == 1
    assert np.abs(warped - current)[:, :-3].max() < 1e-3
    assert temporal_error(current, warped, mask) < 1e-3
    # A pixel whose flows do not undo each other (occlusion) is not trusted.
    forward[10, 10] = (8.0, 8.0)
    assert consistency_mask(forward, backward)[10, 7] == 0


@pytest.fixture(scope="module")
def network(weights):
    return build_network(weights, LOSS, "max")


class Maker:
    """A ``FrameMaker``: every frame in the style of ``style``, its optimised image as the
    output, an independent frame started by ``start(index, frame)`` (the frame itself)."""

    def __init__(self, style: np.ndarray, start=lambda index, frame: frame):
        self.style, self.start = style, start

    def problem_for(self, index: int, frame: np.ndarray) -> Problem:
        return Problem(frame, [self.style], [1.0], LOSS)

    def output_image(self, image: np.ndarray, frame: np.ndarray) -> np.ndarray:
        return image

    def start_image(self, index: int, frame: np.ndarray) -> np.ndarray:
        return self.start(index, frame)


def _mean_temporal_error(frames, mode, network, tmp_path, iterations=(40, 12)):
    style = stripes_image(40, 40)
    settings = VideoSettings(init=mode, temporal_weight=10000.0,
                             first_frame_iterations=iterations[0],
                             frame_iterations=iterations[1])

    def start(index, frame):
        rng = np.random.default_rng(index)
        return (IMAGENET_MEAN_RGB + rng.normal(0, 0.256, frame.shape)).astype(np.float32)

    done = stylize_video(frames, Maker(style, start), network,
                         LoopSettings(optimizer=AdamSettings()), settings,
                         FrameStore(tmp_path / mode), iterations[0])
    assert [f.index for f in done] == list(range(len(frames)))
    errors = [f.metrics["video/temporal_error"] for f in done[1:]]
    return float(np.mean(errors))


def test_warm_start_steadies_a_static_clip(network, tmp_path):
    frames = static(3)
    independent = _mean_temporal_error(frames, "independent", network, tmp_path)
    previous = _mean_temporal_error(frames, "previous", network, tmp_path)
    assert previous < 0.6 * independent


def test_flow_follows_a_pan_better_than_warm_start(network, tmp_path):
    frames = pan(3, 3)
    previous = _mean_temporal_error(frames, "previous", network, tmp_path)
    flow = _mean_temporal_error(frames, "flow", network, tmp_path)
    assert flow < 0.6 * previous


def test_temporal_loss_counts_only_trusted_pixels(network, tmp_path, monkeypatch):
    """A flow frame is pulled towards the previous stylised frame warped onto it, only
    where the input's flow can be trusted: the optimiser's own loss is
    ``temporal_weight * mean(c * (x - warped)^2)`` with the clip's consistency mask c."""
    frames = pan(2, 3)
    problems: list[Problem] = []
    original = video.stylize

    def spy(problem: Problem, *args, **kwargs) -> Result:
        problems.append(problem)
        return original(problem, *args, **kwargs)

    monkeypatch.setattr(video, "stylize", spy)
    settings = VideoSettings(init="flow", temporal_weight=3.0, first_frame_iterations=2,
                             frame_iterations=2)
    done = stylize_video(frames, Maker(stripes_image(40, 40)), network,
                         LoopSettings(optimizer=AdamSettings()), settings, FrameStore(tmp_path), 2)
    assert problems[0].temporal is None and "loss/temporal" not in done[0].metrics
    target, mask = problems[1].temporal
    assert problems[1].loss.temporal == settings.temporal_weight
    motion = Motion.between(frames[0], frames[1], settings.flow)
    np.testing.assert_array_equal(mask, motion.mask)
    assert 0.7 < mask.mean() < 1.0  # the columns that came into view are not trusted
    assert done[1].metrics["video/trusted_fraction"] == pytest.approx(mask.mean())
    trusted = mask > 0
    np.testing.assert_allclose(target[trusted], motion.carry(done[0].working)[trusted],
                               atol=1e-3)
    # Every pixel 40 away from the target: only the trusted ones count, over all H*W*3.
    probe = target + np.where(target < 128, 40.0, -40.0).astype(np.float32)
    at_probe = original(problems[1], network, probe, LoopSettings(optimizer=AdamSettings()), 1,
                        require_progress=False)
    expected = settings.temporal_weight * np.mean(mask[..., None] * 40.0**2)
    assert at_probe.metrics["loss/temporal"] == pytest.approx(expected, rel=1e-3)


@pytest.fixture
def clip_inputs(tmp_path):
    style = tmp_path / "style.png"
    Image.fromarray(stripes_image(40, 40).astype(np.uint8)).save(style)
    clip = write_video(pan(4, 2), tmp_path / "clip.mp4", fps=8,
                       audio_from=tone(tmp_path / "tone.m4a"))
    return clip, style


def _clip_run(compose_config, tmp_path, clip, style, extra=(), out="out"):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [f"content={clip}", f"style={style}", "size=40", "iterations=20",
                 "video.frame_iterations=5", f"tracking.uri={uri}", "progress=false", *extra]
    cfg = compose_config(overrides)
    return uri, lambda: run_config(cfg, tmp_path / out, overrides)


def _runs(uri):
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("style_exp")
    return client, client.search_runs([experiment.experiment_id],
                                      order_by=["attributes.start_time ASC"])


def test_video_run_is_tracked_and_resumes_after_an_interruption(compose_config, tmp_path,
                                                                clip_inputs, monkeypatch):
    clip, style = clip_inputs
    calls = []
    original = video.stylize

    def interrupted_at_frame_2(*args, **kwargs):
        calls.append(args[0].content.shape)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(video, "stylize", interrupted_at_frame_2)
    uri, first = _clip_run(compose_config, tmp_path, clip, style, out="first")
    with pytest.raises(KeyboardInterrupt):
        first()
    assert sorted(p.name for p in (tmp_path / "first" / "frames").iterdir()) == [
        "000000.png", "000001.png"]
    assert not (tmp_path / "first" / "output.mp4").exists()
    # Make the stopped run a zombie, as kill -9 would leave it: RUNNING, its process gone.
    client, (stopped,) = _runs(uri)
    assert stopped.info.status == "KILLED"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    client.set_tag(stopped.info.run_id, runs.PID, str(gone.pid))
    client.update_run(stopped.info.run_id, status="RUNNING")

    calls.clear()
    monkeypatch.setattr(video, "stylize", lambda *a, **k: calls.append(1) or original(*a, **k))
    _, second = _clip_run(compose_config, tmp_path, clip, style, ["video.resume=true"], "second")
    frames = second()
    assert len(calls) == 2 and len(frames) == 4  # frames 0 and 1 were not redone

    client, (killed, finished) = _runs(uri)  # the new run reaped the zombie, then resumed
    assert killed.info.status == "FAILED" and finished.info.status == "FINISHED"
    assert f"process {gone.pid}" in killed.data.tags["error"]
    assert finished.data.tags["video.reused_frames"] == "2"
    assert finished.data.tags["video.key"] == killed.data.tags["video.key"]
    errors = client.get_metric_history(finished.info.run_id, "video/temporal_error")
    assert [m.step for m in errors] == [1, 2, 3]
    assert finished.data.metrics["video/temporal_error_mean"] > 0
    assert finished.data.metrics["time/per_frame_s"] > 0
    artifacts = {a.path for a in client.list_artifacts(finished.info.run_id)}
    assert {"output.mp4", "preview.gif", "output.png", "frames"} <= artifacts
    result = open_clip(tmp_path / "second" / "output.mp4", 40)
    assert (result.count, result.fps, result.has_audio) == (4, 8.0, True)


def test_bad_clips_fail_clearly(tmp_path):
    silent = tone(tmp_path / "silent.mp4")  # sound only: no video frames
    with pytest.raises(VideoError, match="silent.mp4"):
        open_clip(silent, 40)
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all")
    with pytest.raises(VideoError, match="cannot read video: .*garbage.mp4"):
        open_clip(garbage, 40)
    with pytest.raises(VideoError, match="video not found"):
        open_clip(tmp_path / "missing.mp4", 40)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (40, 32)).save(mixed / "0001.png")
    Image.new("RGB", (40, 30)).save(mixed / "0002.png")
    with pytest.raises(VideoError, match=r"differ in size: 0001.png is 40x32 but 0002.png"):
        open_clip(mixed, 40)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoError, match="has no images"):
        open_clip(empty, 40)


def test_a_clip_broken_after_the_checks_fails_the_run_before_any_work(parse_config, tmp_path,
                                                                      clip_inputs):
    """The preflight refuses a clip it cannot read (test_cli); one broken between the checks
    and the run fails the run, naming the file, before the network loads."""
    clip, style = clip_inputs
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(clip.read_bytes())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [f"content={broken}", f"style={style}", "size=40", f"tracking.uri={uri}",
                 "progress=false"]
    plan = preflight.check(parse_config(overrides))
    broken.write_bytes(b"\x00" * 64)
    with pytest.raises(VideoError, match="broken.mp4"):
        execute(plan, tmp_path / "out", Provenance(tuple(overrides)))
    _, (record,) = _runs(uri)
    assert record.info.status == "FAILED" and "broken.mp4" in record.data.tags["error"]
    assert "weights_sha256" not in record.data.tags  # failed before loading the network


@pytest.mark.parametrize(("override", "message"), [
    ("video.init=warp", r"must be one of.* \(video.init\)"),
    ("video.stride=0", r"must be positive.* \(video.stride\)"),
    ("video.flow=lucas", r"must be one of.* \(video.flow\)"),
    ("scales=[20,40]", r"coarse-to-fine applies to still images \(scales\)"),
])
def test_video_settings_are_checked_by_name(compose_config, clip_inputs, override, message):
    clip, style = clip_inputs
    cfg = compose_config([f"content={clip}", f"style={style}", "size=40", override])
    with pytest.raises(ConfigError, match=message):
        parse(cfg)


@pytest.mark.parametrize(("overrides", "lrs"), [
    (["video.frame_lr=2.5"], [AdamSettings().lr, 2.5, 2.5]),
    # Without a temporal term every frame has the same objective: the compiled step of
    # frame 0 must not be reused with its lr.
    (["video.init=previous", "video.frame_lr=2.5", "optimizer.lr=4"], [4.0, 2.5, 2.5]),
    (["video.frame_lr=null", "optimizer.lr=4"], [4.0, 4.0, 4.0]),
], ids=["flow", "previous", "null"])
def test_frame_lr_is_adams_lr_after_the_first_frame(compose_config, tmp_path, clip_inputs,
                                                    overrides, lrs):
    """README: ``video.frame_lr`` is Adam's lr for frames started from the previous one
    (``null``: ``optimizer.lr``); the first frame keeps ``optimizer.lr``. The logged lr is
    the one Adam's update used, per frame index."""
    clip, style = clip_inputs
    uri, run = _clip_run(compose_config, tmp_path, clip, style,
                         ["optimizer=adam", "video.max_frames=3", "iterations=5",
                          "video.frame_iterations=2", *overrides])
    run()
    client, (record,) = _runs(uri)
    history = client.get_metric_history(record.info.run_id, "lr")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
        list(enumerate(lrs))


def test_resume_extends_a_clip_without_redoing_its_frames(compose_config, tmp_path,
                                                         clip_inputs, monkeypatch):
    """README: ``video.max_frames`` and ``video.fps`` change no frame, so a resumed run
    that allows more frames takes over the finished ones and makes only the new ones,
    each started from the one before as usual."""
    clip, style = clip_inputs
    uri, short = _clip_run(compose_config, tmp_path, clip, style, ["video.max_frames=2"],
                           "short")
    short()
    assert open_clip(tmp_path / "short" / "output.mp4", 40).count == 2
    made: list[Problem] = []
    original = video.stylize
    monkeypatch.setattr(video, "stylize",
                        lambda problem, *a, **k: made.append(problem) or original(problem, *a, **k))
    _, longer = _clip_run(compose_config, tmp_path, clip, style,
                          ["video.resume=true", "video.fps=4"], "long")
    frames = longer()
    assert [f.index for f in frames] == [0, 1, 2, 3]
    assert len(made) == 2  # frames 2 and 3 only
    assert all(problem.temporal is not None for problem in made)  # carried on from frame 1
    _, (first, second) = _runs(uri)
    assert second.data.tags["video.key"] == first.data.tags["video.key"]
    assert second.data.tags["video.resumed_from"] == first.info.run_id
    assert second.data.tags["video.reused_frames"] == "2"
    for name in ("000000.png", "000001.png"):
        assert (tmp_path / "long" / "frames" / name).read_bytes() == \
            (tmp_path / "short" / "frames" / name).read_bytes()
    result = open_clip(tmp_path / "long" / "output.mp4", 40)
    assert (result.count, result.fps) == (4, 4.0)
