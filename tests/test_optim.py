"""Optimisers, schedules, initialisation, colour preservation and coarse-to-fine."""

import math

import numpy as np
import pytest
import tensorflow as tf
from conftest import gradient_image, run_config, stripes_image, write_image
from mlflow.tracking import MlflowClient
from PIL import Image

from style_exp.app import preflight
from style_exp.app.job import prepare
from style_exp.app.parse import parse, scale_plan
from style_exp.engine import color
from style_exp.engine.adam import learning_rate
from style_exp.engine.init import initial_image
from style_exp.engine.lbfgs import LBFGS
from style_exp.engine.objective import Problem, build_network, compute_targets, loss_and_gradient
from style_exp.engine.progress import Interrupted
from style_exp.engine.stylize import rescaled, stylize, stylize_scales
from style_exp.engine.weights import IMAGENET_MEAN_RGB
from style_exp.spec.loss import LossSettings, layer_weights
from style_exp.spec.runspec import Scale
from style_exp.spec.settings import AdamSettings, ConfigError, LBFGSSettings, LoopSettings

BOUNDED_DIRECTION_TOLERANCE = 1e-3  # relative L2 difference of two directions; 2e-4 measured
LOSS = LossSettings().weights()


@pytest.fixture(scope="module")
def network(weights):
    return build_network(weights, LOSS, "max")


@pytest.fixture(scope="module")
def problem():
    return Problem(gradient_image(40, 56), [stripes_image(48, 48)], [1.0], LOSS)


def _noise(shape):
    return IMAGENET_MEAN_RGB + np.random.default_rng(0).normal(0, 0.256, shape).astype(np.float32)


def _final_loss(result):
    return result.history[-1][1]["loss/total"]


@pytest.mark.parametrize("optimizer", [
    AdamSettings(),
    AdamSettings(schedule="exponential", decay_steps=10),
    AdamSettings(schedule="step", decay_steps=5),
    AdamSettings(schedule="cosine", decay_steps=20),
    LBFGSSettings(),
], ids=["adam", "exponential", "step", "cosine", "lbfgs"])
def test_every_optimiser_and_schedule_lowers_the_loss(problem, network, optimizer):
    result = stylize(problem, network, _noise(problem.content.shape),
                     LoopSettings(optimizer=optimizer, log_every=5), 20)
    assert _final_loss(result) < 0.5 * result.history[0][1]["loss/total"]
    assert {"loss/total", "loss/content", "loss/style", "loss/tv"} <= set(result.history[-1][1])


def test_lbfgs_beats_adam_at_equal_steps(problem, network):
    init = _noise(problem.content.shape)
    adam, lbfgs = (
        stylize(problem, network, init, LoopSettings(optimizer=optimizer, log_every=15), 15)
        for optimizer in (AdamSettings(), LBFGSSettings()))
    assert _final_loss(lbfgs) < _final_loss(adam)
    assert lbfgs.history[-1][1]["lbfgs/evaluations"] >= 15
    assert lbfgs.image.min() >= 0.0 and lbfgs.image.max() <= 255.0


def test_lbfgs_stops_cleanly_on_convergence(problem, network):
    result = stylize(problem, network, _noise(problem.content.shape),
                     LoopSettings(optimizer=LBFGSSettings(ftol=0.5), log_every=10), 50)
    assert result.steps < 50
    assert "CONVERGENCE" in result.stop_reason.upper()
    assert result.history[-1][0] == result.steps


def test_lbfgs_stops_on_small_projected_gradient(problem, network):
    result = stylize(problem, network, _noise(problem.content.shape),
                     LoopSettings(optimizer=LBFGSSettings(gtol=1e9), log_every=10), 50)
    assert result.steps == 1 and result.stop_reason.startswith("convergence: projected gradient")


def test_preconditioner_is_a_symmetric_positive_low_pass_filter():
    shape = (1, 12, 16, 3)
    lbfgs = LBFGS(shape, LBFGSSettings(smoothing=2.0))
    rng = np.random.default_rng(0)
    u, v = (tf.constant(rng.normal(size=shape), tf.float32) for _ in range(2))
    assert float(tf.reduce_sum(u * lbfgs.precondition(v))) == pytest.approx(
        float(tf.reduce_sum(v * lbfgs.precondition(u))), rel=1e-4)
    assert float(tf.reduce_sum(v * lbfgs.precondition(v))) > 0
    flat = tf.fill(shape, 7.0)
    np.testing.assert_allclose(lbfgs.precondition(flat), flat, rtol=1e-5)
    # The finest pattern, a checkerboard, is a Laplacian eigenvector with eigenvalue 8.
    y, x = np.mgrid[0:12, 0:16]
    checker = tf.constant(np.repeat(((-1.0) ** (x + y))[None, ..., None], 3, axis=3), tf.float32)
    np.testing.assert_allclose(lbfgs.precondition(checker), checker / 17.0, atol=1e-5)


def test_lbfgs_direction_descends_and_holds_pixels_pushed_past_a_bound():
    shape = (1, 8, 10, 3)
    rng = np.random.default_rng(1)
    image = tf.constant(rng.choice([0.0, 100.0, 255.0], size=shape), tf.float32)
    gradient = tf.constant(rng.normal(size=shape), tf.float32)
    lbfgs = LBFGS(shape, LBFGSSettings(history_size=3))
    for _ in range(5):  # fill (and wrap) the memory with positive-curvature pairs
        step = tf.constant(rng.normal(size=shape), tf.float32)
        lbfgs.remember(step, 2.0 * step + 0.1 * tf.constant(rng.normal(size=shape), tf.float32))
    assert int(lbfgs.stored) == 5
    direction = lbfgs.direction(image, gradient).numpy()
    held = ((image.numpy() == 0) & (gradient.numpy() > 0)) | (
        (image.numpy() == 255) & (gradient.numpy() < 0))
    assert held.any() and np.all(direction[held] == 0)
    assert float(tf.reduce_sum(gradient * direction)) < 0


def test_bounded_memory_lbfgs_gives_the_ordinary_direction():
    """bfloat16 pairs read slot by slot: the float32 direction up to bfloat16's rounding
    (8 bits of mantissa, a relative error of about 2^-9 per stored value)."""
    shape = (1, 24, 32, 3)
    rng = np.random.default_rng(2)
    image = tf.constant(rng.uniform(1.0, 254.0, size=shape), tf.float32)
    gradient = tf.constant(rng.normal(size=shape), tf.float32)
    hessian = tf.constant(rng.uniform(1.0, 20.0, size=shape), tf.float32)  # diagonal, SPD
    ordinary, bounded = (LBFGS(shape, LBFGSSettings(history_size=4), bounded_memory=flag)
                         for flag in (False, True))
    for _ in range(6):  # fills and wraps the ring buffer
        step = tf.constant(rng.normal(size=shape), tf.float32)
        for lbfgs in (ordinary, bounded):
            lbfgs.remember(step, hessian * step)
    assert bounded.s.dtype == tf.bfloat16 and int(bounded.stored) == 6
    exact, rounded = (lbfgs.direction(image, gradient) for lbfgs in (ordinary, bounded))
    assert float(tf.norm(rounded - exact) / tf.norm(exact)) < BOUNDED_DIRECTION_TOLERANCE
    assert float(tf.reduce_sum(gradient * rounded)) < 0


def test_smoothing_lowers_the_loss_faster(problem, network):
    init = _noise(problem.content.shape)
    plain, smoothed = (
        stylize(problem, network, init, LoopSettings(optimizer=optimizer, log_every=30), 30)
        for optimizer in (LBFGSSettings(smoothing=0.0), LBFGSSettings()))
    assert _final_loss(smoothed) < _final_loss(plain)


def test_lbfgs_interrupt_keeps_best_image(problem, network):
    """L-BFGS reports the loss of the image each step leaves: an interrupted run keeps the
    image delivered at the lowest logged loss, and that image, evaluated afresh, has that
    loss, below the start's."""
    start = _noise(problem.content.shape)
    seen = {}  # step: (loss, image)

    def interrupt(progress):
        seen[progress.step] = (progress.metrics["loss/total"], progress.image)
        if progress.step >= 3:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as caught:
        stylize(problem, network, start,
                LoopSettings(optimizer=LBFGSSettings(), log_every=1, checkpoint_every=1), 50,
                callback=interrupt)
    result = caught.value.result
    assert result.interrupted and result.steps == 3
    best_loss, best_image = min(seen.values(), key=lambda seen_at: seen_at[0])
    np.testing.assert_array_equal(result.image, best_image)
    targets = compute_targets(network, problem)
    kept, at_start = (float(loss_and_gradient(network, tf.constant(image[None]), targets,
                                              problem.loss)[0]["total"])
                      for image in (result.image, start))
    assert kept == pytest.approx(best_loss, rel=1e-4) and kept < at_start


def test_schedules_follow_their_formulas():
    def lr(settings, step):
        return float(learning_rate(settings, tf.constant(float(step))))

    assert lr(AdamSettings(lr=10), 700) == pytest.approx(10)
    assert lr(AdamSettings(lr=10, schedule="exponential", decay_rate=0.5, decay_steps=100),
              200) == pytest.approx(2.5)
    step = AdamSettings(lr=8, schedule="step", decay_rate=0.5, decay_steps=100)
    assert (lr(step, 99), lr(step, 100), lr(step, 250)) == pytest.approx((8, 4, 2))
    cosine = AdamSettings(lr=10, schedule="cosine", decay_rate=0.1, decay_steps=100)
    assert (lr(cosine, 0), lr(cosine, 50), lr(cosine, 100), lr(cosine, 500)) == \
        pytest.approx((10, 5.5, 1, 1))


HAND_SCHEDULES = {  # the schedules of AdamSettings' docstring, t the step (1-based)
    "exponential": lambda lr, rate, t, steps: lr * rate ** (t / steps),
    "step": lambda lr, rate, t, steps: lr * rate ** (t // steps),
    "cosine": lambda lr, rate, t, steps: lr * (
        rate + (1 - rate) * 0.5 * (1 + math.cos(math.pi * min(t / steps, 1.0)))),
}


@pytest.mark.parametrize("schedule", sorted(HAND_SCHEDULES))
def test_the_compiled_step_follows_the_schedule(problem, network, schedule):
    """The run, not just ``learning_rate``, must follow the schedule: the logged ``lr`` is
    the formula's at every step; Adam's first update moves each pixel by exactly lr(1)
    (its m / sqrt(v) is the gradient's sign); and once the rate has fallen to 1e-8
    (decay_rate 1e-9 after decay_steps) the image stops changing."""
    settings = AdamSettings(schedule=schedule, decay_rate=1e-9, decay_steps=4)
    start = _noise(problem.content.shape)
    images, rates = {0: start}, {}

    def record(progress):
        images[progress.step], rates[progress.step] = progress.image, progress.metrics["lr"]

    stylize(problem, network, start,
            LoopSettings(optimizer=settings, log_every=1, checkpoint_every=1), 8,
            callback=record, require_progress=False)
    expected = {t: HAND_SCHEDULES[schedule](settings.lr, settings.decay_rate, t,
                                            settings.decay_steps) for t in range(1, 9)}
    assert rates == pytest.approx(expected, rel=1e-5)
    first_move = np.abs(images[1] - start)
    assert (np.median(first_move), first_move.max()) == pytest.approx(
        (expected[1], expected[1]), rel=1e-3)
    assert np.abs(images[8] - images[settings.decay_steps - 1]).max() < 1e-3


def test_multiscale_produces_final_size_and_numbers_steps_across_scales(problem, network):
    full = Problem(gradient_image(48, 64), [stripes_image(64, 64)], [1.0], LOSS)
    events = []
    result = stylize_scales(lambda side: rescaled(full, side), [Scale(32, 6), Scale(64, 4)],
                            network, _noise((48, 64, 3)),
                            LoopSettings(optimizer=AdamSettings(), log_every=2),
                            callback=events.append)
    assert result.image.shape == (48, 64, 3)
    sizes = {e.step: e.metrics["scale/size"] for e in events}
    assert sizes[6] == 32 and sizes[7] == 64 and max(sizes) == 10
    assert [step for step, _ in result.history] == sorted(step for step, _ in result.history)


def test_luminance_preservation_keeps_content_chroma():
    content = gradient_image(32, 32)
    painting = stripes_image(32, 32)
    grey_content, (grey_style,) = color.prepare(content, [painting], "luminance")
    assert np.allclose(grey_content[..., 0], grey_content[..., 1])
    # The style's luma now has the content's mean and spread.
    assert color.rgb_to_yiq(grey_style)[..., 0].mean() == pytest.approx(
        color.rgb_to_yiq(content)[..., 0].mean(), abs=2.0)
    # A stylised luma (here the content's plus a texture) keeps the content's I and Q.
    stylised = grey_content + 0.15 * (painting - 128.0)
    result = color.finish(stylised, content, "luminance")
    chroma_change = np.abs(color.rgb_to_yiq(result)[..., 1:] - color.rgb_to_yiq(content)[..., 1:])
    assert chroma_change.mean() < 1.5
    untouched = np.abs(color.rgb_to_yiq(painting)[..., 1:] - color.rgb_to_yiq(content)[..., 1:])
    assert untouched.mean() > 20


def test_histogram_matching_gives_style_the_content_colour_statistics():
    content = gradient_image(32, 32)
    style = 0.4 * gradient_image(40, 40, seed=1)[..., ::-1] + 90.0  # other colours, flatter
    matched = color.match_color_statistics(style, content)
    pixels_m, pixels_c = matched.reshape(-1, 3), content.reshape(-1, 3)
    np.testing.assert_allclose(pixels_m.mean(axis=0), pixels_c.mean(axis=0), atol=3.0)
    np.testing.assert_allclose(np.cov(pixels_m.T), np.cov(pixels_c.T), rtol=0.1, atol=60)


def test_style_layer_exponent_shifts_weight_to_coarse_layers():
    layers = ["relu1_1", "relu2_1", "relu3_1"]
    weights = layer_weights("loss.style_layers", layers, None, exponent=2.0)
    assert list(weights.values()) == pytest.approx([1 / 7, 2 / 7, 4 / 7])


def test_pooling_changes_the_result(weights, problem):
    results = [stylize(problem, build_network(weights, LOSS, pooling),
                       _noise(problem.content.shape),
                       LoopSettings(optimizer=AdamSettings(), log_every=3), 3)
               for pooling in ("max", "avg")]
    assert not np.allclose(results[0].image, results[1].image)


@pytest.mark.parametrize("override, message", [
    ("scales=[64,32]", r"must be positive and increasing.* \(scales\)"),
    ("scales=[32,64]", r"must end at size=256.* \(scales\)"),  # the demo's size
    ("scale_iterations=[5,5]", r"positive count for each of the 1 scales.* \(scale_iterations\)"),
    ("optimizer=adam optimizer.schedule=linear", r"must be one of.* \(optimizer.schedule\)"),
    ("loss.style_layer_exponent=-1", r"must be positive.* \(loss.style_layer_exponent\)"),
    ("init.noise_ratio=1.5", r"must be in \[0, 1\].* \(init.noise_ratio\)"),
    ("color=sepia", r"must be one of.* \(color\)"),
])
def test_bad_values_fail_before_computation(parse_config, override, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(override.split())


def test_bad_lbfgs_value(compose_config):
    with pytest.raises(ConfigError, match=r"must be positive.* \(optimizer.history_size\)"):
        parse(compose_config(["optimizer=lbfgs", "optimizer.history_size=0"]))


def test_scale_plan(compose_config):
    assert parse(compose_config(["size=256", "content=c.jpg", "style=s.jpg"])).scales == (
        Scale(256, 1000),)
    assert scale_plan([64, 128, 256], [30, 20, 10], 256, 1000) == (
        Scale(64, 30), Scale(128, 20), Scale(256, 10))


def _quadrants(height: int, width: int) -> np.ndarray:
    """Four flat colours, one per quadrant: stretched to any shape, each keeps its corner."""
    image = np.empty((height, width, 3), np.float32)
    top, left = height // 2, width // 2
    image[:top, :left], image[:top, left:] = (250, 10, 10), (10, 250, 10)
    image[top:, :left], image[top:, left:] = (10, 10, 250), (250, 250, 10)
    return image


@pytest.mark.parametrize("kind", ["content", "style", "image"])
def test_init_kinds_start_from_their_picture_at_the_content_shape(compose_config, tmp_path,
                                                                  kind):
    """The photo itself; the first style (a square of quadrants) or a file (a wide one)
    stretched to the content's 24x32, each quadrant in its corner. Pixels next to the
    seams are left out: the resampling filter blends across them."""
    start = write_image(tmp_path / "start.png", _quadrants(40, 80))
    cfg = compose_config([f"init={kind}", *([f"init.path={start}"] if kind == "image" else [])])
    content, styles = gradient_image(24, 32), [_quadrants(40, 40), stripes_image(24, 32)]
    image = initial_image(parse(cfg).init, content, styles,
                          np.random.default_rng(0))
    assert image.shape == content.shape
    expected = content if kind == "content" else _quadrants(24, 32)
    away = np.ones(content.shape[:2], bool)
    away[12 - 3:12 + 3], away[:, 16 - 3:16 + 3] = False, False
    np.testing.assert_allclose(image[away], expected[away], atol=1.0)


def test_noise_start_is_the_mean_pixel_plus_seeded_gaussian_noise(compose_config):
    """README: mean pixel + N(0, init.noise_scale), differing by seed and only by seed."""
    settings = parse(compose_config(["init=noise"])).init
    content = gradient_image(48, 64)

    def start(seed: int) -> np.ndarray:
        return initial_image(settings, content, [], np.random.default_rng(seed))

    image = start(0)
    assert image.shape == content.shape
    pixels = image.reshape(-1, 3)  # 3072 per channel: mean to +-0.005, std to 1.3% (1 sigma)
    np.testing.assert_allclose(pixels.mean(axis=0), IMAGENET_MEAN_RGB, atol=0.03)
    np.testing.assert_allclose(pixels.std(axis=0), settings.noise_scale, rtol=0.1)
    np.testing.assert_array_equal(start(0), image)
    assert not np.allclose(start(1), image)


@pytest.mark.parametrize("init", [["init=noise"], ["init=content", "init.noise_ratio=0.5"]],
                         ids=["noise", "noise_ratio"])
def test_the_config_seed_sets_the_runs_start_image(parse_config, init):
    """README: ``seed`` seeds the initial noise (``init=noise``, ``init.noise_ratio``).
    Through ``job.prepare``, where every run gets its start image."""
    def start(seed: int) -> np.ndarray:
        return prepare(preflight.check(parse_config([*init, f"seed={seed}", "size=32"]))).init

    first = start(1)
    np.testing.assert_array_equal(start(1), first)
    assert not np.allclose(start(2), first)


def test_init_noise_ratio_blends(compose_config):
    cfg = compose_config(["init=content", "init.noise_ratio=0.5", "init.noise_scale=0"])
    content = gradient_image(24, 32)
    image = initial_image(parse(cfg).init, content, [],
                          np.random.default_rng(0))
    np.testing.assert_allclose(image, 0.5 * content + 0.5 * IMAGENET_MEAN_RGB, atol=1e-3)


def test_multiscale_lbfgs_colour_run_logs_every_scale(compose_config, tmp_path):
    content, style = tmp_path / "c.png", tmp_path / "s.png"
    Image.fromarray(gradient_image(48, 64).astype(np.uint8)).save(content)
    Image.fromarray(stripes_image(64, 64).astype(np.uint8)).save(style)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [f"content={content}", f"style={style}", "size=64", "scales=[32,64]",
                 "scale_iterations=[6,4]", "optimizer=lbfgs", "color=luminance",
                 "tracking.log_every=2", f"tracking.uri={uri}", "progress=false"]
    run_config(compose_config(overrides), tmp_path / "out", overrides)
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("style_exp").experiment_id])[0]
    sizes = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "scale/size")}
    assert sizes[6] == 32 and sizes[10] == 64
    assert run.data.metrics["lbfgs/evaluations"] >= 4
    assert run.data.tags["stop_reason"]
    output = np.asarray(Image.open(tmp_path / "out" / "output.png"), np.float32)
    assert output.shape == (48, 64, 3)
    # Luminance mode: the output has the content photo's colours.
    original = np.asarray(Image.open(content), np.float32)
    chroma = np.abs(color.rgb_to_yiq(output)[..., 1:] - color.rgb_to_yiq(original)[..., 1:])
    assert chroma.mean() < 3.0
