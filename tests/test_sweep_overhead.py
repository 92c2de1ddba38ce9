"""A sweep's later jobs reuse what their inputs and settings share with the job before
(``Workspace.targets``, the quality meter's measurements), invisibly: each makes the image
and logs the metrics it makes and logs in a fresh process, and reuses nothing stale."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import gradient_image, run_config, stripes_image
from mlflow.tracking import MlflowClient
from PIL import Image

from style_exp.app import job, preflight
from style_exp.app.job import Warm
from style_exp.engine import objective
from style_exp.engine.objective import Problem, Workspace, build_network
from style_exp.engine.quality import KEEP_MEASURED, QualityMeter
from style_exp.engine.stylize import stylize_scales
from style_exp.spec.loss import LossSettings


@pytest.fixture
def images(tmp_path):
    paths = {name: tmp_path / f"{name}.png" for name in ("content", "style", "other_style")}
    Image.fromarray(gradient_image(40, 48).astype(np.uint8)).save(paths["content"])
    Image.fromarray(stripes_image(48, 48).astype(np.uint8)).save(paths["style"])
    Image.fromarray(gradient_image(48, 48, seed=3)[::-1].astype(np.uint8)).save(
        paths["other_style"])
    return paths


@pytest.fixture
def base(images):
    return [f"content={images['content']}", f"style={images['style']}", "size=48",
            "iterations=4", "init=content", "precision=float32", "progress=false"]


@pytest.fixture
def computed(monkeypatch):
    """How often the targets and quality distances were computed (not reused)."""
    counts = {"targets": 0, "quality": 0}
    reference, measure = objective._reference_targets, QualityMeter._measure

    def counted_reference(*args):
        counts["targets"] += 1
        return reference(*args)

    def counted_measure(self, image):
        counts["quality"] += 1
        return measure(self, image)

    monkeypatch.setattr(objective, "_reference_targets", counted_reference)
    monkeypatch.setattr(QualityMeter, "_measure", counted_measure)
    return counts


def _image_and_start_quality(parse_config, overrides: list[str]):
    """A job as ``execute`` runs it, without the tracking: its image, its start's quality."""
    made = job.prepare(preflight.check(parse_config(overrides)))
    spec = made.spec
    result = stylize_scales(made.problem_at, spec.scales, made.network, made.init, spec.loop,
                            workspaces=made.workspaces)
    return result.image, made.quality(made.output_image(made.init))


@pytest.mark.parametrize("change", [
    "style={other_style}",  # another painting
    "size=40",  # another size
    "loss.style_layers=[relu1_1,relu2_1]",
    "loss/style=mean_std",  # another statistic, same layers and network
    "precision=bfloat16",
    "color=histogram",  # the styles recoloured: other pixels, same files
])
def test_a_job_whose_key_differs_reuses_nothing_stale(parse_config, base, images, computed,
                                                      monkeypatch, change):
    changed = [*base, change.format(**images), "loss.style_weight=50"]
    monkeypatch.setattr(job, "WARM", Warm())
    cold_image, cold_quality = _image_and_start_quality(parse_config, changed)
    monkeypatch.setattr(job, "WARM", Warm())
    _image_and_start_quality(parse_config, base)
    before = dict(computed)
    warm_image, warm_quality = _image_and_start_quality(parse_config, changed)
    np.testing.assert_array_equal(warm_image, cold_image)
    assert warm_quality == cold_quality
    assert computed["targets"] == before["targets"] + 1, "the targets were not computed anew"


def test_a_later_job_reuses_targets_and_start_quality_and_logs_what_a_cold_one_logs(
        compose_config, base, tmp_path, computed, monkeypatch):
    store = tmp_path / "store"
    store.mkdir()
    overrides = [*base, f"tracking.uri=sqlite:///{store / 'mlflow.db'}"]

    def run(name: str, *extra: str) -> tuple[np.ndarray, str]:
        args = [*overrides, *extra]
        result = run_config(compose_config(args), tmp_path / name, args)
        return result.image, MlflowClient(overrides[-1].removeprefix("tracking.uri=")) \
            .search_runs(["1"], order_by=["attributes.start_time DESC"])[0].info.run_id

    later = ("seed=2", "loss.style_weight=50")
    monkeypatch.setattr(job, "WARM", Warm())
    cold_image, cold_run = run("cold", *later)
    monkeypatch.setattr(job, "WARM", Warm())
    run("first", "seed=1")
    before = dict(computed)
    warm_image, warm_run = run("warm", *later)
    assert computed["targets"] == before["targets"], "the later job computed its targets"
    # its start (the photo, as init=content) was measured by the first job: only its end
    assert computed["quality"] == before["quality"] + 1

    np.testing.assert_array_equal(warm_image, cold_image)
    client = MlflowClient(overrides[-1].removeprefix("tracking.uri="))

    def logged(run_id: str) -> dict[str, list[tuple[int, float]]]:
        keys = [key for key in client.get_run(run_id).data.metrics if not key.startswith("time/")]
        return {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
                for key in keys}

    assert logged(warm_run) == logged(cold_run)
    warm, cold = client.get_run(warm_run).data, client.get_run(cold_run).data
    assert warm.params == cold.params
    assert warm.tags.keys() == cold.tags.keys()
    same = [key for key in cold.tags if key.startswith(("version.", "input_sha256."))]
    for key in ["stop_reason", "compute_precision", "weights_sha256", *same]:
        assert warm.tags[key] == cold.tags[key], key


def test_tensorflow_seed_is_set_once_per_seed_not_per_job(parse_config, base, monkeypatch):
    """Setting it clears TensorFlow's kernel cache: every compiled step is built again."""
    seeds = []
    monkeypatch.setattr(tf.random, "set_seed", seeds.append)
    monkeypatch.setattr(job, "WARM", Warm())
    for extra in (["seed=1"], ["seed=1", "loss.style_weight=50"], ["seed=2"]):
        job.prepare(preflight.check(parse_config([*base, *extra])))
    assert seeds == [1, 2]


def test_the_meter_measures_an_image_once_and_keeps_only_the_latest(weights, computed):
    meter = QualityMeter(weights, gradient_image(40, 48), [stripes_image(48, 48)], [1.0])
    photo = gradient_image(40, 48)
    first = meter(photo)
    assert meter(photo.copy()) == first and computed["quality"] == 1
    assert meter(photo + 1) != first and computed["quality"] == 2  # other pixels
    for shift in range(KEEP_MEASURED):
        meter(photo + 2 + shift)
    assert meter(photo) == first and computed["quality"] == 2 + KEEP_MEASURED + 1


def test_a_workspace_computes_targets_anew_for_another_network(weights, computed):
    """The app's workspaces are per network already (``job.WARM``); a workspace shared
    across networks (a library user's) still does not hand one network's targets to
    another: the network is part of the key."""
    loss = LossSettings().weights()
    problem = Problem(gradient_image(32, 32), [stripes_image(32, 32)], [1.0], loss)
    workspace = Workspace()
    full = workspace.targets(build_network(weights, loss, "max", "float32"), problem)
    again = workspace.targets(build_network(weights, loss, "max", "float32"), problem)
    half = workspace.targets(build_network(weights, loss, "max", "bfloat16"), problem)
    assert computed["targets"] == 3
    assert full.content["relu4_2"].dtype == again.content["relu4_2"].dtype == tf.float32
    assert half.content["relu4_2"].dtype == tf.bfloat16
