"""The loss terms of the seed paper, normalised as its reference implementation does,
and the style statistics it can compare.

The paper's printed equations carry a factor 2 that its code does not apply; we
follow the code (see README, "Deviations"):

    content = w_c * sum_l a_l * mean((X_l - C_l)^2)
    style   = w_s * k * sum_r w_r * sum_l lambda_l * d(T(M_rl(x)), T(M*_rl))
    tv      = w_tv * (mean(dy^2) + mean(dx^2))
    temporal = w_t * mean(c * (x - w)^2)       (video only, Ruder et al. 2016)

where a_l and lambda_l are per-layer weights summing to 1, w the previous stylised
frame warped onto this one and c the mask of pixels where that warp can be trusted.

Every style statistic T is a function of the features' moments: with F_p the C
features at position p of layer l (reshaped to (N, C)) and m_p >= 0 a position's
weight (1 everywhere, or a region's mask: spatial control, Gatys et al. 2017),

    M = (n, s, S) = (sum_p m_p, sum_p m_p F_p, sum_p m_p F_p F_p^T)

sums a tiled pass accumulates exactly. From mu = s/n, the second moment S/n and
Sigma = S/n - mu mu^T, each statistic T and its distance d (k its ``scale``):

    gram:        G = S / (n C);               d = mean((G - G*)^2)          (the seed's)
    mean_std:    mu, sigma = sqrt(diag Sigma); d = mean((mu - mu*)^2) + mean((sigma - sigma*)^2)
    wasserstein: mu, Sigma;                   d = mean((mu - mu*)^2)
                     + tr(Sigma + Sigma* - 2 (Sigma*^1/2 Sigma Sigma*^1/2)^1/2) / C

wasserstein is the squared 2-Wasserstein distance between the Gaussians N(mu, Sigma),
per channel; both covariances get a ridge r * tr(Sigma*)/C on their diagonal. The
square root is an eigendecomposition whose gradient solves the Sylvester equation
(1/(s_i + s_j) in the eigenbasis), in float64 from the covariances on: VGG's
covariances span ~10 decades of eigenvalues, so in float32 Sigma*^1/2 Sigma Sigma*^1/2
gets negative eigenvalues and the gradient explodes, and a Newton-Schulz iteration
neither converges in 20 steps nor stays finite in 40 (measured: README, "Style
statistics"). The moments themselves stay float32 (or float64 if the features are).

The target M* of a blend of styles s with weights b_s is the blend's feature
distribution, a mixture: (1, sum_s b_s s_s/n_s, sum_s b_s S_s/n_s). For the Gram that
is the weighted Gram sum_s b_s G_s; for mean_std and wasserstein the mixture's mean and
(co)variance, which include the spread between the styles' means. With regions r
(weights w_r; one region, the whole image, without masks), each region's moments are
weighted by its mask and its target is its own blend; a region of weight 0 has no style
term, so it keeps the photo, and neither has a region with n = 0 (absent from a frame).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import tensorflow as tf

from style_exp.spec.loss import LossWeights, StatisticSettings

Statistic = dict[str, tf.Tensor]  # a statistic's named parts at one layer


def content_loss(features: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Mean squared difference between the image's and the content's activations."""
    return tf.reduce_mean(tf.square(features - target))


class Moments(NamedTuple):
    """(n, s, S): a layer's (weighted) position count, feature sum and outer-product sum."""

    count: tf.Tensor  # ()
    total: tf.Tensor  # (C,)
    outer: tf.Tensor  # (C, C)


def moments(features: tf.Tensor, mask: tf.Tensor | None = None) -> Moments:
    """The moments of a (.., C) activation map in float32, each position weighted by
    ``mask`` (same positions, one channel) if given."""
    channels = features.shape[-1]
    dtype = tf.float64 if features.dtype == tf.float64 else tf.float32
    flat = tf.reshape(tf.cast(features, dtype), (-1, channels))
    if mask is None:
        return Moments(tf.cast(tf.shape(flat)[0], dtype), tf.reduce_sum(flat, 0),
                       tf.matmul(flat, flat, transpose_a=True))
    weights = tf.reshape(tf.cast(mask, dtype), (-1, 1))
    weighted = flat * weights
    return Moments(tf.reduce_sum(weights), tf.reduce_sum(weighted, 0),
                   tf.matmul(weighted, flat, transpose_a=True))


def blend_moments(parts: Sequence[tuple[float, Moments]]) -> Moments:
    """The moments of a mixture of feature distributions, normalised to n = 1."""
    return Moments(tf.constant(1.0, parts[0][1].total.dtype),
                   tf.add_n([b * m.total / m.count for b, m in parts]),
                   tf.add_n([b * m.outer / m.count for b, m in parts]))


def gram_matrix(features: tf.Tensor) -> tf.Tensor:
    """Channel correlations F^T F / (H*W*C) of one (1, H, W, C) activation map."""
    return gram(moments(features))["gram"]


def gram(m: Moments) -> Statistic:
    """G = S / (n C)."""
    return {"gram": m.outer / (m.count * m.outer.shape[-1])}


def style_loss(gram: tf.Tensor, target_gram: tf.Tensor) -> tf.Tensor:
    """Mean squared difference between two Gram matrices."""
    return tf.reduce_mean(tf.square(gram - target_gram))


def gram_distance(statistic: Statistic, target: Statistic) -> tf.Tensor:
    return style_loss(statistic["gram"], target["gram"])


def _mean_cov(m: Moments) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean and covariance in float64 (see the module's docstring)."""
    count = tf.cast(m.count, tf.float64)
    mean = tf.cast(m.total, tf.float64) / count
    return mean, tf.cast(m.outer, tf.float64) / count - mean[:, None] * mean[None, :]


# Keeps sqrt's gradient finite for a channel that is constant (a dead ReLU); (0..255)^2 units.
VARIANCE_FLOOR = 1e-6


def mean_std(m: Moments) -> Statistic:
    """Each channel's mean and standard deviation."""
    mean = m.total / m.count
    variance = tf.linalg.diag_part(m.outer) / m.count - tf.square(mean)
    return {"mean": mean, "std": tf.sqrt(tf.maximum(variance, 0.0) + VARIANCE_FLOOR)}


def mean_std_distance(statistic: Statistic, target: Statistic) -> tf.Tensor:
    return (tf.reduce_mean(tf.square(statistic["mean"] - target["mean"]))
            + tf.reduce_mean(tf.square(statistic["std"] - target["std"])))


@tf.custom_gradient
def sqrtm(matrix: tf.Tensor) -> tf.Tensor:
    """The square root of a symmetric positive semi-definite matrix.

    By eigendecomposition, A = V diag(e) V^T: sqrt(A) = V diag(s) V^T, s = sqrt(e). Its
    gradient solves the Sylvester equation X sqrt(A) + sqrt(A) X = G: in the eigenbasis
    (V^T G V)_ij / (s_i + s_j), finite unless two eigenvalues are both zero (hence the
    ridge), where eigh's own gradient divides by e_i - e_j.
    """
    values, vectors = tf.linalg.eigh(matrix)
    roots = tf.sqrt(tf.maximum(values, 0.0))
    root = tf.matmul(vectors * roots, vectors, transpose_b=True)

    def gradient(upstream: tf.Tensor) -> tf.Tensor:
        inner = tf.matmul(vectors, tf.matmul(upstream, vectors), transpose_a=True)
        inner /= tf.maximum(roots[:, None] + roots[None, :], 1e-12)
        return tf.matmul(vectors, tf.matmul(inner, vectors, transpose_b=True))

    return root, gradient


def gaussian(m: Moments) -> Statistic:
    """The features' mean and covariance."""
    mean, cov = _mean_cov(m)
    return {"mean": mean, "cov": cov}


def gaussian_target(m: Moments, ridge: float) -> Statistic:
    """The target's mean, ridged covariance, its square root and trace, and the ridge
    (the image's covariance gets the same)."""
    mean, cov = _mean_cov(m)
    channels = cov.shape[-1]
    shift = ridge * tf.linalg.trace(cov) / channels + 1e-8  # float64
    cov += shift * tf.eye(channels, dtype=tf.float64)
    return {"mean": mean, "cov_sqrt": sqrtm(cov), "trace": tf.linalg.trace(cov), "ridge": shift}


def wasserstein_distance(statistic: Statistic, target: Statistic) -> tf.Tensor:
    """Squared 2-Wasserstein distance between N(mu, Sigma) and the target's, per channel."""
    channels = statistic["cov"].shape[-1]
    cov = statistic["cov"] + target["ridge"] * tf.eye(channels, dtype=tf.float64)
    root = target["cov_sqrt"]
    cross = sqrtm(tf.matmul(root, tf.matmul(cov, root)))
    traces = tf.linalg.trace(cov) + target["trace"] - 2.0 * tf.linalg.trace(cross)
    return tf.reduce_mean(tf.square(statistic["mean"] - target["mean"])) + traces / channels


class StyleStatistic(NamedTuple):
    """A statistic of the image's moments, of the target's, and the distance between them."""

    of_image: Callable[[Moments], Statistic]
    of_target: Callable[[Moments], Statistic]
    distance: Callable[[Statistic, Statistic], tf.Tensor]


# Each statistic's functions, from its settings, by its name in the loss/style group.
STATISTICS: dict[str, Callable[[Any], StyleStatistic]] = {
    "gram": lambda _: StyleStatistic(gram, gram, gram_distance),
    "mean_std": lambda _: StyleStatistic(mean_std, mean_std, mean_std_distance),
    "wasserstein": lambda settings: StyleStatistic(
        gaussian, functools.partial(gaussian_target, ridge=settings.ridge), wasserstein_distance),
}


def style_statistic(settings: StatisticSettings) -> StyleStatistic:
    """The functions of the statistic ``settings`` configure (``loss/style=NAME``)."""
    return STATISTICS[settings.name](settings)


def total_variation_loss(image: tf.Tensor) -> tf.Tensor:
    """Mean squared difference of vertical plus horizontal neighbours (smoothness prior)."""
    dy = image[:, 1:, :, :] - image[:, :-1, :, :]
    dx = image[:, :, 1:, :] - image[:, :, :-1, :]
    return tf.reduce_mean(tf.square(dy)) + tf.reduce_mean(tf.square(dx))


def temporal_loss(image: tf.Tensor, warped: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean squared deviation from the warped previous frame where the warp is trusted."""
    return tf.reduce_mean(mask * tf.square(image - warped))


class StyleTarget(NamedTuple):
    """What one region's features are pulled towards (the whole image without masks)."""

    weight: float  # w_r
    # Per style layer, the weight of each position, (1, h, w, 1); None: the whole image.
    masks: dict[str, tf.Tensor] | None
    statistics: dict[str, Statistic]  # per style layer, the target statistic T(M*)


class Targets(NamedTuple):
    """What the image is pulled towards, computed once before optimisation.

    A tuple, so a compiled step can take it as an argument: a video's frames then
    reuse one trace of the step with their own targets.
    """

    # The content's activations per layer, in the network's dtype (exactly what a
    # float32 copy would hold, at half the bytes under bfloat16).
    content: dict[str, tf.Tensor]
    style: list[StyleTarget]  # one per region with a non-zero weight
    # Video: the previous stylised frame warped onto this one, (1, H, W, 3), and the
    # mask of trusted pixels, (1, H, W, 1).
    temporal: tuple[tf.Tensor, tf.Tensor] | None = None
    # Each term's weight (``LossWeights.term_weights``) as a tensor: arguments of the
    # compiled step, so a sweep over them reuses one trace. None: the weights' own.
    term_weights: dict[str, tf.Tensor] | None = None


def style_term(image_moments: Sequence[dict[str, Moments]], targets: Targets,
               weights: LossWeights) -> tf.Tensor:
    """w_s k sum_r w_r sum_l lambda_l d(T(M_rl), T*_rl), given the image's moments M_rl
    per region (as ``targets.style``) and layer."""
    statistic = style_statistic(weights.statistic)
    values = [target.weight * lam * region_distance(statistic, region[layer],
                                                    target.statistics[layer])
              for target, region in zip(targets.style, image_moments, strict=True)
              for layer, lam in weights.style_layers.items()]
    total = tf.add_n(values) if values else tf.constant(0.0)
    return weights.style * weights.statistic.scale * total


def region_distance(statistic: StyleStatistic, m: Moments, target: Statistic) -> tf.Tensor:
    """d(T(M), T*) in float32; 0 for a region with no positions (absent from a frame's
    label image), whose statistic is taken at n = 1 instead of 0/0: finite, so neither
    the loss nor its gradient turns NaN, and a tensor test, so frames share one trace."""
    present = m.count > 0
    safe = Moments(tf.where(present, m.count, tf.ones_like(m.count)), m.total, m.outer)
    distance = tf.cast(statistic.distance(statistic.of_image(safe), target), tf.float32)
    return tf.where(present, distance, tf.zeros_like(distance))


def loss_terms(features: dict[str, tf.Tensor], image: tf.Tensor, targets: Targets,
               weights: LossWeights) -> dict[str, tf.Tensor]:
    """The weighted content, style, TV (and, for video, temporal) terms, and their total."""
    content = sum(
        a * content_loss(tf.cast(features[layer], tf.float32),
                         tf.cast(targets.content[layer], tf.float32))
        for layer, a in weights.content_layers.items()
    )
    terms = {
        "content": weights.content * content,
        "style": style_term([{layer: moments(features[layer], None if target.masks is None
                                             else target.masks[layer])
                              for layer in weights.style_layers}
                             for target in targets.style], targets, weights),
        "tv": weights.tv * total_variation_loss(image),
    }
    if targets.temporal is not None:
        terms["temporal"] = weights.temporal * temporal_loss(image, *targets.temporal)
    terms["total"] = tf.add_n(list(terms.values()))
    return terms
