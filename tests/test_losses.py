"""The loss terms against values computed by hand with numpy."""

import numpy as np
import pytest
import tensorflow as tf

from style_exp.engine.losses import (
    Targets,
    content_loss,
    gram_matrix,
    loss_terms,
    style_loss,
    temporal_loss,
    total_variation_loss,
)
from style_exp.spec.loss import LossWeights

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
    targets = Targets(
        {"a": tf.constant(content["a"], tf.float32)},
        [(0.8, {k: tf.constant(gram(styles[0]), tf.float32) for k in "ab"}),
         (0.2, {k: tf.constant(gram(styles[1]), tf.float32) for k in "ab"})],
    )
    image = RNG.uniform(0, 255, size=(1, 2, 2, 3))
    terms = loss_terms({k: tf.constant(v, tf.float32) for k, v in feats.items()},
                       tf.constant(image, tf.float32), targets, weights)

    exp_content = 5.0 * np.mean((feats["a"] - content["a"]) ** 2)
    exp_style = 500.0 * sum(
        blend * lam * np.mean((gram(feats[layer]) - gram(styles[s])) ** 2)
        for s, blend in enumerate((0.8, 0.2)) for layer, lam in (("a", 0.25), ("b", 0.75))
    )
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
    still = Targets({"a": feats["a"]}, [(1.0, {"a": gram_matrix(feats["a"])})])
    frame = still._replace(temporal=(tf.constant(warped, tf.float32),
                                     tf.constant(mask, tf.float32)))
    x = tf.constant(image, tf.float32)
    assert "temporal" not in loss_terms(feats, x, still, weights)
    terms = loss_terms(feats, x, frame, weights)
    assert float(terms["temporal"]) == pytest.approx(7.0 * 1.5, rel=1e-4)
    others = sum(float(terms[name]) for name in ("content", "style", "tv"))
    assert float(terms["total"]) == pytest.approx(others + 7.0 * 1.5, rel=1e-4)
