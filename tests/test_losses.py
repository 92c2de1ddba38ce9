"""The loss terms against values computed by hand with numpy."""

import numpy as np
import pytest
import tensorflow as tf

from style_exp.losses import (
    LossWeights,
    Targets,
    content_loss,
    gram_matrix,
    loss_terms,
    style_loss,
    total_variation_loss,
)

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
