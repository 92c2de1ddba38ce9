"""Quality figures that compare across runs, whatever each run's loss weights and layers.

A run's losses are weighted by its own config: at ``style_weight=5000`` the total is
larger because the weight is, so losses cannot say which run of a sweep kept more of
the photo or matched the painting better. These distances are measured the same way
for every run, with a fixed network (VGG-19, max pooling, float32) and fixed layers:

    content_distance = |F(x) - F(c)| / |F(c)|                     at relu4_2
    style_distance   = mean_l |G_l(x) - G_l*| / |G_l*|             over relu1_1..relu5_1
    G_l*             = sum_s b_s G_l(s)                            the blended styles' Gram

measured with the longest side at most ``MEASURE_SIDE`` px, with |.| the Frobenius norm,
F the activations, G the Gram matrices of ``losses.py`` and b_s the blend weights. Both
are relative: 0 is the photo's content (the blend's style) exactly, and 1 is as far from
it as an image whose activations are all zero.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from style_exp.engine.images import resize, resize_longest
from style_exp.engine.losses import gram_matrix
from style_exp.engine.vgg import VGG19Features
from style_exp.engine.weights import VGGWeights

CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_DISTANCE = "quality/content_distance"
STYLE_DISTANCE = "quality/style_distance"
# Longest side the distances are measured at: cheap at checkpoints, and a print-size
# image (optimised by tiles) need not pass through the network whole.
MEASURE_SIDE = 512


def relative_distance(value: tf.Tensor, target: tf.Tensor) -> float:
    """|value - target| / |target|: 0 at the target, the same at any scale of the features."""
    return float(tf.norm(value - target) / tf.maximum(tf.norm(target), 1e-12))


class QualityMeter:
    """Measures images against one content photo and one blend of styles."""

    def __init__(self, weights: VGGWeights, content: np.ndarray, styles: list[np.ndarray],
                 blend: list[float]):
        self.network = VGG19Features(weights, [CONTENT_LAYER, *STYLE_LAYERS], "max", "float32")
        content = _at_most(content, MEASURE_SIDE)
        self.size = (content.shape[1], content.shape[0])
        self.content = self._features(content)[CONTENT_LAYER]
        style_features = [self._features(_at_most(style, MEASURE_SIDE)) for style in styles]
        self.grams = {layer: tf.add_n([b * gram_matrix(features[layer])
                                       for b, features in zip(blend, style_features, strict=True)])
                      for layer in STYLE_LAYERS}

    def _features(self, image: np.ndarray) -> dict[str, tf.Tensor]:
        return self.network(tf.constant(image[None], tf.float32))

    def __call__(self, image: np.ndarray) -> dict[str, float]:
        """The two distances of ``image``, resized to the size the photo is measured at."""
        if image.shape[1::-1] != self.size:
            image = resize(image, self.size)
        features = self._features(image)
        style = np.mean([relative_distance(gram_matrix(features[layer]), self.grams[layer])
                         for layer in STYLE_LAYERS])
        return {CONTENT_DISTANCE: relative_distance(features[CONTENT_LAYER], self.content),
                STYLE_DISTANCE: float(style)}


def _at_most(image: np.ndarray, side: int) -> np.ndarray:
    return image if max(image.shape[:2]) <= side else resize_longest(image, side)
