"""Spatial control on a clip with a label image per frame (``masks.content=DIR``)."""

import sys
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf
from conftest import gradient_image, run_cli, run_config, stripes_image, write_image
from mlflow.tracking import MlflowClient

from style_exp.app import job, preflight
from style_exp.engine import video, videoio
from style_exp.engine.images import load_image
from style_exp.engine.masks import Region, frame_labels, label_masks
from style_exp.engine.objective import Problem, build_network
from style_exp.engine.vgg import VGG19Features
from style_exp.engine.video import FrameStore, stylize_video
from style_exp.engine.videoio import open_clip, write_video
from style_exp.spec.errors import UserError
from style_exp.spec.loss import STYLE_STATISTICS, LossSettings, LossWeights
from style_exp.spec.masks import MaskSpec, RegionSpec
from style_exp.spec.settings import AdamSettings, LoopSettings, VideoSettings

HEIGHT, WIDTH = 48, 64
RED, BLUE = (255, 0, 0), (0, 0, 255)
# Red takes the painting, blue keeps the photo.
REGIONS = "masks.regions=[{color:[255,0,0]},{color:[0,0,255],weight:0}]"


def labels(red_side: str | None) -> np.ndarray:
    """Red on the ``left`` or ``right`` half (None: nowhere), blue elsewhere."""
    image = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    image[:] = BLUE
    if red_side is not None:
        half = slice(0, WIDTH // 2) if red_side == "left" else slice(WIDTH // 2, WIDTH)
        image[:, half] = RED
    return image


def write_clip(folder, sides, names=None):
    """A folder of still frames (the same photo: only the masks move) and one of labels."""
    frames, masks = folder / "frames", folder / "labels"
    frames.mkdir()
    masks.mkdir()
    for index, side in enumerate(sides):
        write_image(frames / f"f{index}.png", gradient_image(HEIGHT, WIDTH))
        name = names[index] if names else f"l{index}.png"
        write_image(masks / name, labels(side))
    return frames, masks


def clip_overrides(tmp_path, frames, masks, *extra):
    style = write_image(tmp_path / "style.png", stripes_image(48, 48))
    return [f"content={frames}", f"style={style}", f"masks.content={masks}", REGIONS,
            "size=64", "optimizer=lbfgs", "init=content", "video.init=independent",
            "iterations=15", "video.frame_iterations=15", "progress=false",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *extra]


def change_by_half(out, index, frame) -> tuple[float, float]:
    """Mean change from the photo on the left and the right half (away from the middle,
    where the styled half's features reach)."""
    change = np.abs(load_image(out / "frames" / f"{index:06d}.png") - frame).mean(axis=-1)
    return change[:, : WIDTH // 2 - 12].mean(), change[:, WIDTH // 2 + 12:].mean()


def test_each_frame_is_styled_where_its_own_label_image_says(compose_config, tmp_path):
    """Frame 0's red half is the left, frame 1's the right: the painted half moves with the
    masks, also when frame 1 is made by a resumed run (label i belongs to frame i)."""
    frames, masks = write_clip(tmp_path, ["left", "right"])
    photo = load_image(frames / "f0.png")
    short = clip_overrides(tmp_path, frames, masks, "video.max_frames=1")
    run_config(compose_config(short), tmp_path / "short", short)
    resumed = clip_overrides(tmp_path, frames, masks, "video.resume=true")
    run_config(compose_config(resumed), tmp_path / "long", resumed)
    left, right = change_by_half(tmp_path / "long", 0, photo)
    assert left > 4 * right, (left, right)  # measured: see the report
    left, right = change_by_half(tmp_path / "long", 1, photo)
    assert right > 4 * left, (left, right)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (long_run,) = [run for run in client.search_runs(
        [client.get_experiment_by_name("style_exp").experiment_id])
        if run.data.tags.get("video.reused_frames")]
    assert long_run.data.tags["video.reused_frames"] == "1"


def test_the_flow_warm_start_takes_each_frames_own_masks(compose_config, tmp_path,
                                                          monkeypatch):
    """``video.init=flow``: frame 1 starts from frame 0 carried along the flow, with the
    temporal term, and its problem has frame 1's regions."""
    frames, masks = write_clip(tmp_path, ["left", "right"])
    made: list[Problem] = []
    original = video.stylize
    monkeypatch.setattr(video, "stylize",
                        lambda problem, *a, **k: made.append(problem) or original(problem, *a, **k))
    overrides = clip_overrides(tmp_path, frames, masks, "video.init=flow",
                               "video.frame_iterations=3", "iterations=3")
    run_config(compose_config(overrides), tmp_path / "out", overrides)
    assert [problem.temporal is not None for problem in made] == [False, True]
    for problem, side in zip(made, ["left", "right"], strict=True):
        expected = label_masks(labels(side), [RED, BLUE])
        for region, mask in zip(problem.regions, expected, strict=True):
            np.testing.assert_array_equal(region.mask, mask)


def test_label_files_pair_with_frames_by_the_frames_rule(tmp_path):
    """Natural order (l2 before l10) and the clip's stride and frame limit, as the frames;
    a video file's frame count."""
    names = [f"l{index}.png" for index in (0, 1, 2, 10, 11)]  # "l10" < "l2" as text
    frames, masks = write_clip(tmp_path, ["left"] * 5, names)
    spec = MaskSpec(str(masks), (RegionSpec(RED, (0,), (1.0,), 1.0),))
    clip = open_clip(frames, WIDTH, stride=2, max_frames=2)
    assert [path.name for path in frame_labels(spec, clip)] == ["l0.png", "l2.png"]
    assert [path.name for path in frame_labels(spec, open_clip(frames, WIDTH, stride=2))] == \
        ["l0.png", "l2.png", "l11.png"]
    movie = write_video([gradient_image(HEIGHT, WIDTH)] * 5, tmp_path / "clip.mp4", fps=5)
    assert len(frame_labels(spec, open_clip(movie, WIDTH))) == 5  # a video file's frames


def test_a_label_folder_is_checked_before_the_run(parse_config, tmp_path):
    """One-line errors naming the key and the folder: no images, a count that is not the
    clip's (both numbers), a folder for a photo, a colour in none of the label images.
    A colour missing from some frames only is fine."""
    frames, masks = write_clip(tmp_path, ["left", None])  # red only in frame 0: fine
    overrides = clip_overrides(tmp_path, frames, masks)
    preflight.check(parse_config(overrides))

    def refused(*changed: str) -> str:
        with pytest.raises(UserError) as raised:
            preflight.check(parse_config([*overrides, *changed]))
        return str(raised.value)

    (tmp_path / "empty").mkdir()
    error = refused(f"masks.content={tmp_path / 'empty'}")
    assert "has no images" in error and str(tmp_path / "empty") in error
    assert error.endswith("(masks.content)")
    write_image(masks / "l2.png", labels("left"))
    error = refused()
    assert f"3 label images in {masks}" in error and "has 2 frames" in error
    assert error.endswith("(masks.content)")
    (masks / "l2.png").unlink()
    error = refused(f"content={frames / 'f0.png'}")
    assert f"folder of label images ({masks})" in error and error.endswith("(masks.content)")
    write_image(masks / "l0.png", labels(None))  # now red is in no frame
    error = refused()
    assert f"colour [255, 0, 0] is not in any of the 2 label images in {masks}" in error
    assert error.endswith("(masks.regions[0].color)")
    done = run_cli(overrides, tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "masks.regions[0].color" in lines[0]


def counted(monkeypatch, original) -> Counter:
    """Calls of ``original`` by its first argument, wherever a style_exp module holds it."""
    calls: Counter = Counter()

    def counting(first, *args, **kwargs):
        calls[str(first)] += 1
        return original(first, *args, **kwargs)

    for module in list(sys.modules.values()):
        if module.__name__.startswith("style_exp") and \
                getattr(module, original.__name__, None) is original:
            monkeypatch.setattr(module, original.__name__, counting)
    return calls


def test_the_clip_is_opened_and_its_folders_listed_once(parse_config, tmp_path, monkeypatch):
    """The preflight opens the clip and lists its frames and label images; the job uses
    them as checked, deriving neither again (and no optimisation step is needed to see it)."""
    frames, masks = write_clip(tmp_path, ["left", "right"])
    opened = counted(monkeypatch, videoio.open_clip)
    listed = counted(monkeypatch, videoio.frame_files)
    plan = preflight.check(parse_config(clip_overrides(tmp_path, frames, masks)))
    made = job.prepare(plan)
    assert opened == {str(frames): 1}
    assert listed == {str(frames): 1, str(masks): 1}
    assert made.clip is plan.sizes.clip and made.clip.count == 2
    assert [path.name for path in made.labels] == ["l0.png", "l1.png"]
    red, _ = label_masks(labels("left"), [RED, BLUE])
    np.testing.assert_array_equal(made.problem.regions[0].mask, red)


class MovingMasks:
    """A ``FrameMaker`` whose frame ``index`` has its own regions: red (styled) on the
    left, then the right, then nowhere; blue keeps the photo."""

    sides = ("left", "right", None)

    def __init__(self, style: np.ndarray, loss: LossWeights):
        self.style, self.loss = style, loss

    def problem_for(self, index: int, frame: np.ndarray) -> Problem:
        red, blue = label_masks(labels(self.sides[index]), [RED, BLUE])
        return Problem(frame, [self.style], [1.0], self.loss,
                       regions=(Region(red, (0,), (1.0,), 1.0), Region(blue, (0,), (1.0,), 0.0)))

    def output_image(self, image: np.ndarray, frame: np.ndarray) -> np.ndarray:
        return image

    def start_image(self, index: int, frame: np.ndarray) -> np.ndarray:
        return frame


@pytest.mark.parametrize("statistic", ["gram", "wasserstein"])
def test_frames_with_their_own_masks_share_one_trace(weights, tmp_path, monkeypatch,
                                                     statistic):
    """The masks are arguments of the compiled step, not constants in it: three frames
    with three different label images trace the step once. A region absent from a frame
    has no style term there, and nothing turns NaN."""
    loss = LossSettings(content_layers=("relu2_2",), style_layers=("relu1_1", "relu2_1"),
                        ).weights(statistic=STYLE_STATISTICS[statistic]())
    network = build_network(weights, loss, "max")
    traced = []
    original = VGG19Features.__call__
    monkeypatch.setattr(VGG19Features, "__call__", lambda self, images: traced.append(
        tf.executing_eagerly()) or original(self, images))
    photo = gradient_image(HEIGHT, WIDTH)
    done = stylize_video([photo] * 3, MovingMasks(stripes_image(48, 48), loss), network,
                         LoopSettings(optimizer=AdamSettings(lr=4.0)),
                         VideoSettings(init="independent", frame_iterations=4),
                         FrameStore(tmp_path), 4)
    assert traced.count(False) == 1  # one trace for the three frames
    assert all(np.isfinite(frame.image).all() for frame in done)
    assert all(np.isfinite(value) for frame in done for value in frame.metrics.values())
    assert done[2].metrics["loss/style"] == 0.0 < done[1].metrics["loss/style"]
