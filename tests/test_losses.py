"""The loss terms against values computed by hand with numpy; the style statistics'
gradients against finite differences, their blends and their config group."""

import dataclasses

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf
from conftest import gradient_image, stripes_image

from style_exp.engine.losses import (
    StyleTarget,
    Targets,
    blend_moments,
    content_loss,
    gram_matrix,
    loss_terms,
    mean_std,
    moments,
    sqrtm,
    style_loss,
    style_statistic,
    temporal_loss,
    total_variation_loss,
    wasserstein_distance,
)
from style_exp.engine.objective import Problem, build_network, compute_targets, loss_and_gradient
from style_exp.spec.loss import STYLE_STATISTICS, LossSettings, LossWeights
from style_exp.spec.settings import ConfigError

RNG = np.random.default_rng(42)


def test_content_loss_is_mean_squared_difference():
    x, c = RNG.normal(size=(1, 3, 4, 5)), RNG.normal(size=(1, 3, 4, 5))
    expected = np.sum((x - c) ** 2) / x.size
    assert float(content_loss(tf.constant(x, tf.float32), tf.constant(c, tf.float32))) == \
        pytest.approx(expected, rel=1e-5)


def test_gram_matrix_normalised_by_h_w_c():
    f = np.arange(2 * 3 * 2, dtype=np.float32).reshape(1, 2, 3, 2)
    flat = f.reshape(6, 2)
    expected = flat.T @ flat / (2 * 3 * 2)
    np.testing.assert_allclose(gram_matrix(tf.constant(f)).numpy(), expected, rtol=1e-6)
    # A hand-checked entry: sum of squares of the even numbers 0..10, over 12.
    assert expected[0, 0] == pytest.approx((0 + 4 + 16 + 36 + 64 + 100) / 12)


def test_style_loss_is_mean_squared_gram_difference():
    a, b = RNG.normal(size=(4, 4)), RNG.normal(size=(4, 4))
    expected = np.mean((a - b) ** 2)
    assert float(style_loss(tf.constant(a), tf.constant(b))) == pytest.approx(expected)


def test_total_variation_hand_computed():
    image = np.zeros((1, 2, 3, 1), np.float32)
    image[0, :, :, 0] = [[0, 1, 3], [2, 2, 2]]
    dy = np.array([[2, 1, -1]])  # row 1 - row 0
    dx = np.array([[1, 2], [0, 0]])
    expected = np.mean(dy**2) + np.mean(dx**2)  # 2 + 1.25
    assert float(total_variation_loss(tf.constant(image))) == pytest.approx(expected)
    assert expected == pytest.approx(3.25)


def test_loss_terms_weight_layers_and_blend_styles():
    feats = {"a": RNG.normal(size=(1, 2, 2, 3)), "b": RNG.normal(size=(1, 2, 2, 3))}
    content = {"a": RNG.normal(size=(1, 2, 2, 3))}
    styles = [RNG.normal(size=(1, 2, 2, 3)) for _ in range(2)]

    def gram(f):
        flat = f.reshape(-1, f.shape[-1])
        return flat.T @ flat / f.size

    weights = LossWeights(content=5.0, style=500.0, tv=100.0, content_layers={"a": 1.0},
                          style_layers={"a": 0.25, "b": 0.75})
    # The blend's target is the weighted Gram (the mixture's second moment over C).
    blended = 0.8 * gram(styles[0]) + 0.2 * gram(styles[1])
    targets = Targets({"a": tf.constant(content["a"], tf.float32)},
                      [StyleTarget(1.0, None, {k: {"gram": tf.constant(blended, tf.float32)}
                                               for k in "ab"})])
    image = RNG.uniform(0, 255, size=(1, 2, 2, 3))
    terms = loss_terms({k: tf.constant(v, tf.float32) for k, v in feats.items()},
                       tf.constant(image, tf.float32), targets, weights)

    exp_content = 5.0 * np.mean((feats["a"] - content["a"]) ** 2)
    exp_style = 500.0 * sum(lam * np.mean((gram(feats[layer]) - blended) ** 2)
                            for layer, lam in (("a", 0.25), ("b", 0.75)))
    exp_tv = 100.0 * (np.mean(np.diff(image, axis=1) ** 2) + np.mean(np.diff(image, axis=2) ** 2))
    assert float(terms["content"]) == pytest.approx(exp_content, rel=1e-5)
    assert float(terms["style"]) == pytest.approx(exp_style, rel=1e-5)
    assert float(terms["tv"]) == pytest.approx(exp_tv, rel=1e-5)
    assert float(terms["total"]) == pytest.approx(exp_content + exp_style + exp_tv, rel=1e-5)


def _temporal_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 2x2 RGB frame, the warped previous frame and a mask trusting the left column."""
    warped = RNG.uniform(0, 255, size=(1, 2, 2, 3))
    difference = np.array([[[1, 2, 3], [4, 4, 4]],
                           [[0, 0, 2], [5, 5, 5]]], np.float64)[None]
    mask = np.array([[1, 0], [1, 0]], np.float64)[None, ..., None]  # (1, H, W, 1)
    return warped + difference, warped, mask


def _temporal(image: np.ndarray, warped: np.ndarray, mask: np.ndarray) -> float:
    return float(temporal_loss(*(tf.constant(a, tf.float32) for a in (image, warped, mask))))


def test_temporal_loss_hand_computed():
    """mean(c * (x - w)^2) over all H*W*C entries: trusted squares (1+4+9) and (0+0+4),
    untrusted ones (48 and 75) left out, divided by 2*2*3 = 12, not by the trusted count."""
    image, warped, mask = _temporal_case()
    expected = (1 + 4 + 9 + 0 + 0 + 4) / 12
    assert np.mean(mask * (image - warped) ** 2) == pytest.approx(expected)
    assert _temporal(image, warped, mask) == pytest.approx(expected, rel=1e-4)
    assert expected == pytest.approx(1.5)


def test_temporal_loss_sees_only_trusted_pixels():
    """Pixels the flow cannot vouch for (mask 0) may be anything; trusted ones are pulled."""
    image, warped, mask = _temporal_case()
    before = _temporal(image, warped, mask)
    untrusted = image.copy()
    untrusted[0, 0, 1] += 100.0  # mask 0 here
    assert _temporal(untrusted, warped, mask) == pytest.approx(before, rel=1e-6)
    trusted = image.copy()
    trusted[0, 1, 0] += 1.0  # mask 1 here: (1 + 1 + 9) - (0 + 0 + 4) = 7 more
    assert _temporal(trusted, warped, mask) == pytest.approx(before + 7 / 12, rel=1e-4)


def test_loss_terms_weight_the_temporal_term_into_the_total():
    """Video frames add ``w_t * temporal`` to the total; still images have no such term."""
    image, warped, mask = _temporal_case()
    feats = {"a": tf.constant(RNG.normal(size=(1, 2, 2, 3)), tf.float32)}
    weights = LossWeights(content=1.0, style=1.0, tv=1.0, content_layers={"a": 1.0},
                          style_layers={"a": 1.0}, temporal=7.0)
    still = Targets({"a": feats["a"]},
                    [StyleTarget(1.0, None, {"a": {"gram": gram_matrix(feats["a"])}})])
    frame = still._replace(temporal=(tf.constant(warped, tf.float32),
                                     tf.constant(mask, tf.float32)))
    x = tf.constant(image, tf.float32)
    assert "temporal" not in loss_terms(feats, x, still, weights)
    terms = loss_terms(feats, x, frame, weights)
    assert float(terms["temporal"]) == pytest.approx(7.0 * 1.5, rel=1e-4)
    others = sum(float(terms[name]) for name in ("content", "style", "tv"))
    assert float(terms["total"]) == pytest.approx(others + 7.0 * 1.5, rel=1e-4)


STATISTICS = sorted(STYLE_STATISTICS)


def _features(rows: int, channels: int, seed: int) -> np.ndarray:
    """ReLU-like features: non-negative, correlated, some channels often zero."""
    rng = np.random.default_rng(seed)
    mixed = rng.normal(size=(rows, channels)) @ rng.normal(size=(channels, channels))
    return np.maximum(mixed + 0.5, 0.0).astype(np.float32)


def test_moments_weight_positions_by_the_mask():
    features = _features(12, 3, 0)
    mask = np.linspace(0, 1, 12).astype(np.float32)
    m = moments(tf.constant(features[None, :, None, :]), tf.constant(mask[None, :, None, None]))
    assert float(m.count) == pytest.approx(mask.sum())
    np.testing.assert_allclose(m.total, mask @ features, rtol=1e-5)
    np.testing.assert_allclose(m.outer, (features * mask[:, None]).T @ features, rtol=1e-5)


def test_mean_std_is_each_channels_mean_and_deviation():
    features = _features(50, 4, 1)
    statistic = mean_std(moments(tf.constant(features)))
    np.testing.assert_allclose(statistic["mean"], features.mean(0), rtol=1e-5)
    np.testing.assert_allclose(statistic["std"], features.std(0), rtol=1e-3, atol=1e-3)


def test_wasserstein_is_the_closed_form_between_gaussians():
    """W2^2 = |mu - mu*|^2 + tr(S + S* - 2 (S*^1/2 S S*^1/2)^1/2), per channel (ridge 0),
    checked against scipy in float64; and zero between a distribution and itself."""
    a, b = _features(400, 6, 2), 2.0 * _features(300, 6, 3) + 1.0
    statistic = style_statistic(STYLE_STATISTICS["wasserstein"](ridge=0.0))
    value = float(wasserstein_distance(statistic.of_image(moments(tf.constant(a))),
                                       statistic.of_target(moments(tf.constant(b)))))
    mean_a, mean_b = a.mean(0).astype(float), b.mean(0).astype(float)
    cov_a, cov_b = np.cov(a.T, bias=True), np.cov(b.T, bias=True)
    root_b = scipy.linalg.sqrtm(cov_b).real
    cross = scipy.linalg.sqrtm(root_b @ cov_a @ root_b).real
    expected = (np.sum((mean_a - mean_b) ** 2)
                + np.trace(cov_a + cov_b - 2 * cross)) / 6
    assert value == pytest.approx(expected, rel=1e-3)
    itself = float(wasserstein_distance(statistic.of_image(moments(tf.constant(b))),
                                        statistic.of_target(moments(tf.constant(b)))))
    assert abs(itself) < 1e-4 * expected


def test_matrix_square_root_and_its_gradient():
    """sqrt(A)^2 = A, and d tr(sqrt(A)) / dA = A^-1/2 / 2 (the Sylvester solution)."""
    features = _features(200, 5, 4)
    matrix = tf.constant(np.cov(features.T, bias=True) + 0.1 * np.eye(5), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(matrix)
        root = sqrtm(matrix)
        trace = tf.linalg.trace(root)
    np.testing.assert_allclose(root @ root, matrix, rtol=1e-4, atol=1e-4)
    expected = 0.5 * np.linalg.inv(scipy.linalg.sqrtm(matrix.numpy().astype(float)).real)
    np.testing.assert_allclose(tape.gradient(trace, matrix), expected, rtol=1e-3, atol=1e-4)
    # Off the eigenbasis' diagonal too (the trace's gradient never reaches it): any weighted
    # sum of sqrt(A)'s entries, against a central difference along a symmetric direction.
    rng = np.random.default_rng(1)
    weights, direction = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    direction = tf.constant(direction + direction.T)
    exact = tf.cast(matrix, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch(exact)
        weighted = tf.reduce_sum(weights * sqrtm(exact))
    numeric = (float(tf.reduce_sum(weights * sqrtm(exact + 1e-6 * direction)))
               - float(tf.reduce_sum(weights * sqrtm(exact - 1e-6 * direction)))) / 2e-6
    analytic = float(tf.reduce_sum(tape.gradient(weighted, exact) * direction))
    assert analytic == pytest.approx(numeric, rel=1e-6)


# Two shallow layers keep the finite-difference test small and its network cheap.
TINY_LOSS = LossSettings(content_weight=0.0, tv_weight=0.0, content_layers=("relu1_1",),
                         style_layers=("relu1_1", "relu2_1"))


@pytest.fixture(scope="module")
def tiny_network(weights):
    return build_network(weights, TINY_LOSS.weights(), "max")


@pytest.mark.parametrize("name", STATISTICS)
def test_style_gradient_matches_a_finite_difference(tiny_network, name):
    """The gradient of each statistic's distance with respect to a tiny image's features
    (weighted by a soft mask) against a central difference along a random direction, all
    in float64: a wrong custom gradient (sqrtm's) or a lost slope shows at once. (Through
    the float32 network the difference's noise floor is too high to judge by.)"""
    statistic = style_statistic(STYLE_STATISTICS[name]())
    image, painting = gradient_image(24, 24, seed=5), stripes_image(32, 32)
    layers = ("relu1_1", "relu2_1")

    def features_of(x: np.ndarray) -> dict[str, tf.Tensor]:
        return {layer: tf.cast(f, tf.float64)
                for layer, f in tiny_network(tf.constant(x[None])).items() if layer in layers}

    features, targets = features_of(image), {
        layer: statistic.of_target(moments(f)) for layer, f in features_of(painting).items()}
    masks = {layer: tf.constant(np.linspace(0.2, 1.0, f.shape[1] * f.shape[2]).reshape(
        1, f.shape[1], f.shape[2], 1)) for layer, f in features.items()}

    def distance(feats: dict[str, tf.Tensor]) -> tf.Tensor:
        return tf.add_n([statistic.distance(statistic.of_image(moments(feats[layer],
                                                                       masks[layer])),
                                            targets[layer]) for layer in layers])

    with tf.GradientTape() as tape:
        tape.watch(features)
        value = distance(features)
    gradient = tape.gradient(value, features)
    rng = np.random.default_rng(0)
    direction = {layer: tf.constant(rng.normal(size=f.shape)) for layer, f in features.items()}
    step = 1e-3  # activations are O(100)

    def moved(sign: float) -> float:
        return float(distance({layer: f + sign * step * direction[layer]
                               for layer, f in features.items()}))

    numeric = (moved(1.0) - moved(-1.0)) / (2 * step)
    analytic = sum(float(tf.reduce_sum(gradient[layer] * direction[layer])) for layer in layers)
    assert float(value) > 0 and abs(analytic) > 0
    assert analytic == pytest.approx(numeric, rel=1e-4)


@pytest.mark.parametrize("name", STATISTICS)
def test_blend_weights_choose_the_target(tiny_network, name):
    """Blend (1, 0) is the first style's target exactly; the image that is the first style
    is at its target; (0.3, 0.7) is the mixture of the two styles' feature distributions."""
    loss = TINY_LOSS.weights(statistic=STYLE_STATISTICS[name]())
    first, second = stripes_image(32, 32), gradient_image(32, 32, seed=1)

    def style_loss_of(image: np.ndarray, blend: list[float]) -> float:
        problem = Problem(image, [first, second], blend, loss)
        batch = tf.constant(image[None])
        targets = compute_targets(tiny_network, problem)
        return float(loss_and_gradient(tiny_network, batch, targets, loss)[0]["style"])

    assert style_loss_of(first, [1.0, 0.0]) < 1e-4 * style_loss_of(first, [0.0, 1.0])
    assert style_loss_of(second, [0.0, 1.0]) < 1e-4 * style_loss_of(second, [1.0, 0.0])
    assert style_loss_of(first, [0.7, 0.3]) < style_loss_of(first, [0.3, 0.7])
    # The mixture: the moments of both images side by side, each weighted by its blend.
    features = [tiny_network(tf.constant(x[None]))["relu2_1"] for x in (first, second)]
    mixed = blend_moments([(0.3, moments(features[0])), (0.7, moments(features[1]))])
    both = moments(tf.concat(features, axis=2))  # equal sizes: halves of the positions
    together = blend_moments([(1.0, both)])
    halves = blend_moments([(0.5, moments(features[0])), (0.5, moments(features[1]))])
    np.testing.assert_allclose(halves.outer, together.outer, rtol=1e-4)
    np.testing.assert_allclose(mixed.total, 0.3 * moments(features[0]).total / 256
                               + 0.7 * moments(features[1]).total / 256, rtol=1e-5)


@pytest.mark.parametrize("name", STATISTICS)
def test_each_statistic_composes_and_parses(parse_config, name):
    spec = parse_config([f"loss/style={name}"])
    assert spec.loss.statistic == STYLE_STATISTICS[name]()
    assert parse_config([]).loss.statistic == STYLE_STATISTICS["gram"]()


def test_a_bad_statistic_value_names_its_key(parse_config):
    with pytest.raises(ConfigError, match="loss.style.scale"):
        parse_config(["loss/style=mean_std", "loss.style.scale=-1"])
    with pytest.raises(ConfigError, match="loss.style.ridge"):
        parse_config(["loss/style=wasserstein", "loss.style.ridge=-1"])


def test_the_statistic_reaches_the_compiled_steps_key():
    """Two problems differing only in their statistic must not share a compiled step."""
    gram, w2 = (LossSettings().weights(statistic=STYLE_STATISTICS[n]())
                for n in ("gram", "wasserstein"))
    assert repr(gram) != repr(w2) and dataclasses.replace(w2, statistic=gram.statistic) == gram
