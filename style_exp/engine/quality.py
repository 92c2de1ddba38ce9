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

The style distance is the Gram loss's own yardstick, so a companion that none of the
style statistics (``loss/style``) optimises judges them alike, the sliced Wasserstein
distance between the feature distributions (as relative as the others):

    style_swd = mean_l |Q_l(x) - Q_l*| / |Q_l*|

with Q_l the quantiles (at ``QUANTILES`` levels) of the features at layer l projected
onto ``PROJECTIONS`` fixed random unit directions, and Q_l* those of the blend (the
styles' features pooled, each style's positions weighted b_s / n_s). It compares whole
1-D marginals, not moments: matching means, variances or Grams does not zero it.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from style_exp.engine.images import pixels_digest, resize, resize_longest
from style_exp.engine.losses import gram_matrix
from style_exp.engine.vgg import VGG19Features
from style_exp.engine.weights import VGGWeights
from style_exp.spec.metrics import CONTENT_DISTANCE, STYLE_DISTANCE, STYLE_SWD

CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
PROJECTIONS = 64  # random directions per layer (seeded: the same for every run)
QUANTILES = 256
# Longest side the distances are measured at: cheap at checkpoints, and a print-size
# image (optimised by tiles) need not pass through the network whole.
MEASURE_SIDE = 512
KEEP_MEASURED = 4  # images whose distances a meter keeps (the start's among them)


def relative_distance(value: tf.Tensor, target: tf.Tensor) -> float:
    """|value - target| / |target|: 0 at the target, the same at any scale of the features."""
    return float(tf.norm(value - target) / tf.maximum(tf.norm(target), 1e-12))


class QualityMeter:
    """Measures images against one content photo and one blend of styles.

    Its references (the photo's features, the blend's Grams and quantiles: about 0.7 s at
    256 px) are computed at its first measurement, which a run makes after its steps (or
    at its first checkpoint): its first step does not wait for them.
    """

    def __init__(self, weights: VGGWeights, content: np.ndarray, styles: list[np.ndarray],
                 blend: list[float]):
        content = _at_most(content, MEASURE_SIDE)
        self.size = (content.shape[1], content.shape[0])
        self._unbuilt: tuple | None = (weights, content, styles, blend)
        self._measured: dict[str, dict[str, float]] = {}  # by digest, oldest first

    def _build(self, weights: VGGWeights, content: np.ndarray, styles: list[np.ndarray],
               blend: list[float]) -> None:
        self.network = VGG19Features(weights, [CONTENT_LAYER, *STYLE_LAYERS], "max", "float32")
        self.content = self._features(content)[CONTENT_LAYER]
        style_features = [self._features(_at_most(style, MEASURE_SIDE)) for style in styles]
        self.grams = {layer: tf.add_n([b * gram_matrix(features[layer])
                                       for b, features in zip(blend, style_features, strict=True)])
                      for layer in STYLE_LAYERS}
        rng = np.random.default_rng(0)
        self.directions = {}
        for layer in STYLE_LAYERS:
            channels = style_features[0][layer].shape[-1]
            directions = rng.normal(size=(channels, PROJECTIONS)).astype(np.float32)
            self.directions[layer] = directions / np.linalg.norm(directions, axis=0)
        self.quantiles = {layer: self._quantiles(
                              [features[layer] for features in style_features], blend, layer)
                          for layer in STYLE_LAYERS}

    def _quantiles(self, features: list[tf.Tensor], blend: list[float],
                   layer: str) -> np.ndarray:
        """(PROJECTIONS, QUANTILES): the quantiles of the pooled, weighted projections."""
        projected, weights = [], []
        for f, b in zip(features, blend, strict=True):
            if b <= 0:
                continue
            flat = tf.reshape(f, (-1, f.shape[-1]))
            projected.append(tf.matmul(flat, self.directions[layer]).numpy())
            weights.append(np.full(flat.shape[0], b / flat.shape[0]))
        values, weight = np.concatenate(projected), np.concatenate(weights)
        levels = (np.arange(QUANTILES) + 0.5) / QUANTILES
        if len(projected) == 1:  # equal weights: the i-th smallest sits at (i + 1) / n
            # each projection's values sorted as a contiguous row: the same, twice as fast
            ordered = np.sort(np.ascontiguousarray(values.T), axis=1).T
            return _equal_weight_quantiles(ordered, levels).T
        order = np.argsort(values, axis=0)
        cumulative = np.cumsum(weight[order], axis=0)
        cumulative /= cumulative[-1:]
        return np.stack([np.interp(levels, cumulative[:, k], values[order[:, k], k])
                         for k in range(PROJECTIONS)])

    def _features(self, image: np.ndarray) -> dict[str, tf.Tensor]:
        return self.network(tf.constant(image[None], tf.float32))

    def __call__(self, image: np.ndarray) -> dict[str, float]:
        """The distances of ``image``, resized to the size the photo is measured at.

        The last few images' are kept by their pixels' digest: a sweep's jobs that start
        from the same image (``init=content``) measure it once. The digest is taken at the
        measuring size, what the distances depend on (a print-size image is not hashed whole)."""
        if image.shape[1::-1] != self.size:
            image = resize(image, self.size)
        key = pixels_digest(image)
        if key not in self._measured:
            if len(self._measured) >= KEEP_MEASURED:
                self._measured.pop(next(iter(self._measured)))  # the oldest
            self._measured[key] = self._measure(image)
        return dict(self._measured[key])

    def _measure(self, image: np.ndarray) -> dict[str, float]:
        """The distances of an image at the measuring size."""
        if self._unbuilt is not None:
            self._build(*self._unbuilt)
            self._unbuilt = None
        features = self._features(image)
        style = np.mean([relative_distance(gram_matrix(features[layer]), self.grams[layer])
                         for layer in STYLE_LAYERS])
        swd = np.mean([relative_distance(self._quantiles([features[layer]], [1.0], layer),
                                         self.quantiles[layer])
                       for layer in STYLE_LAYERS])
        return {CONTENT_DISTANCE: relative_distance(features[CONTENT_LAYER], self.content),
                STYLE_DISTANCE: float(style), STYLE_SWD: float(swd)}


def _equal_weight_quantiles(ordered: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``np.interp(levels, (arange(n) + 1) / n, column)`` for every column of ``ordered``
    at once: what the weighted path computes for one image, about 10x faster."""
    n = ordered.shape[0]
    position = np.clip(levels * n - 1.0, 0.0, n - 1.0)  # below 1/n: the smallest value
    below = np.floor(position).astype(int)
    above = np.minimum(below + 1, n - 1)
    fraction = (position - below)[:, None]
    return ordered[below] * (1.0 - fraction) + ordered[above] * fraction


def _at_most(image: np.ndarray, side: int) -> np.ndarray:
    return image if max(image.shape[:2]) <= side else resize_longest(image, side)
