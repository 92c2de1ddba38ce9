"""Quality distances: zero at their targets, relative, measured at the photo's size."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import gradient_image, stripes_image

from style_exp.engine.quality import (
    CONTENT_DISTANCE,
    STYLE_DISTANCE,
    STYLE_SWD,
    QualityMeter,
    relative_distance,
)


def test_relative_distance_is_scale_free():
    target = tf.constant([[3.0, 4.0]])
    assert relative_distance(target, target) == 0.0
    assert relative_distance(tf.zeros_like(target), target) == pytest.approx(1.0)
    assert relative_distance(10 * (target + 1), 10 * target) == pytest.approx(
        relative_distance(target + 1, target), rel=1e-6)


@pytest.fixture(scope="module")
def photo_and_painting():
    return gradient_image(48, 64), stripes_image(64, 64)


def test_each_input_is_at_distance_zero_from_itself(weights, photo_and_painting):
    photo, painting = photo_and_painting
    meter = QualityMeter(weights, photo, [painting], [1.0])
    assert meter(photo)[CONTENT_DISTANCE] == pytest.approx(0.0, abs=1e-6)
    meter_on_itself = QualityMeter(weights, painting, [painting], [1.0])
    assert meter_on_itself(painting)[STYLE_DISTANCE] == pytest.approx(0.0, abs=1e-6)
    assert meter_on_itself(painting)[STYLE_SWD] == pytest.approx(0.0, abs=1e-6)


def test_the_painting_is_closer_in_style_and_the_photo_in_content(weights, photo_and_painting):
    photo, painting = photo_and_painting
    meter = QualityMeter(weights, photo, [painting], [1.0])
    as_photo = meter(photo)
    as_painting = meter(painting[:48])
    assert as_painting[STYLE_DISTANCE] < as_photo[STYLE_DISTANCE]
    assert as_painting[STYLE_SWD] < as_photo[STYLE_SWD]
    assert as_photo[CONTENT_DISTANCE] < as_painting[CONTENT_DISTANCE]
    assert 0.1 < as_painting[CONTENT_DISTANCE] < 3  # a relative figure, not a raw loss


def test_blend_weights_choose_the_target_style(weights, photo_and_painting):
    photo, painting = photo_and_painting
    only_first = QualityMeter(weights, photo, [painting, photo], [1.0, 0.0])
    assert only_first(painting[:48])[STYLE_DISTANCE] < only_first(photo)[STYLE_DISTANCE]
    assert only_first(painting[:48])[STYLE_SWD] < only_first(photo)[STYLE_SWD]
    only_second = QualityMeter(weights, photo, [painting, photo], [0.0, 1.0])
    assert only_second(photo)[STYLE_SWD] == pytest.approx(0.0, abs=1e-6)


def test_smaller_images_are_measured_at_the_photos_size(weights, photo_and_painting):
    photo, painting = photo_and_painting
    meter = QualityMeter(weights, photo, [painting], [1.0])
    half = photo[::2, ::2]
    assert meter(half)[CONTENT_DISTANCE] < 0.5 * meter(painting[:48])[CONTENT_DISTANCE]


def test_one_images_quantiles_are_the_interpolated_order_statistics():
    """The equal-weight shortcut gives what np.interp over the sorted values gives."""
    from style_exp.engine.quality import _equal_weight_quantiles

    values = np.random.default_rng(3).normal(size=(37, 5))
    levels = (np.arange(16) + 0.5) / 16
    ordered = np.sort(values, axis=0)
    expected = np.stack([np.interp(levels, np.arange(1, 38) / 37, ordered[:, k])
                         for k in range(5)], axis=1)
    np.testing.assert_allclose(_equal_weight_quantiles(ordered, levels), expected, rtol=1e-12)
