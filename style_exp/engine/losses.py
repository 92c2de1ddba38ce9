"""The loss terms of the seed paper, normalised as its reference implementation does.

The paper's printed equations carry a factor 2 that its code does not apply; we
follow the code (see README, "Deviations"):

    content = w_c * sum_l a_l * mean((X_l - C_l)^2)
    G_l     = F_l^T F_l / (H * W * C)            for F_l reshaped to (H*W, C)
    style   = w_s * sum_s b_s * sum_l lambda_l * mean((G_l(x) - G_l(s))^2)
    tv      = w_tv * (mean(dy^2) + mean(dx^2))
    temporal = w_t * mean(c * (x - w)^2)       (video only, Ruder et al. 2016)

where a_l and lambda_l are per-layer weights summing to 1, b_s the blend weights
of the style images, also summing to 1, w the previous stylised frame warped onto
this one and c the mask of pixels where that warp can be trusted.
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

from style_exp.spec.loss import LossWeights


def content_loss(features: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Mean squared difference between the image's and the content's activations."""
    return tf.reduce_mean(tf.square(features - target))


def gram_matrix(features: tf.Tensor) -> tf.Tensor:
    """Channel correlations F^T F / (H*W*C) of one (1, H, W, C) activation map."""
    channels = tf.shape(features)[-1]
    flat = tf.reshape(tf.cast(features, tf.float32), (-1, channels))
    size = tf.cast(tf.size(flat), tf.float32)
    return tf.matmul(flat, flat, transpose_a=True) / size


def style_loss(gram: tf.Tensor, target_gram: tf.Tensor) -> tf.Tensor:
    """Mean squared difference between two Gram matrices."""
    return tf.reduce_mean(tf.square(gram - target_gram))


def total_variation_loss(image: tf.Tensor) -> tf.Tensor:
    """Mean squared difference of vertical plus horizontal neighbours (smoothness prior)."""
    dy = image[:, 1:, :, :] - image[:, :-1, :, :]
    dx = image[:, :, 1:, :] - image[:, :, :-1, :]
    return tf.reduce_mean(tf.square(dy)) + tf.reduce_mean(tf.square(dx))


def temporal_loss(image: tf.Tensor, warped: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """Mean squared deviation from the warped previous frame where the warp is trusted."""
    return tf.reduce_mean(mask * tf.square(image - warped))


class Targets(NamedTuple):
    """What the image is pulled towards, computed once before optimisation.

    A tuple, so a compiled step can take it as an argument: a video's frames then
    reuse one trace of the step with their own targets.
    """

    # The content's activations per layer, in the network's dtype (exactly what a
    # float32 copy would hold, at half the bytes under bfloat16).
    content: dict[str, tf.Tensor]
    # One (blend weight, {layer: Gram}) pair per style image.
    style_grams: list[tuple[float, dict[str, tf.Tensor]]]
    # Video: the previous stylised frame warped onto this one, (1, H, W, 3), and the
    # mask of trusted pixels, (1, H, W, 1).
    temporal: tuple[tf.Tensor, tf.Tensor] | None = None


def loss_terms(features: dict[str, tf.Tensor], image: tf.Tensor, targets: Targets,
               weights: LossWeights) -> dict[str, tf.Tensor]:
    """The weighted content, style, TV (and, for video, temporal) terms, and their total."""
    content = sum(
        a * content_loss(tf.cast(features[layer], tf.float32),
                         tf.cast(targets.content[layer], tf.float32))
        for layer, a in weights.content_layers.items()
    )
    grams = {layer: gram_matrix(features[layer]) for layer in weights.style_layers}
    style = sum(
        blend * lam * style_loss(grams[layer], target[layer])
        for blend, target in targets.style_grams
        for layer, lam in weights.style_layers.items()
    )
    terms = {
        "content": weights.content * content,
        "style": weights.style * style,
        "tv": weights.tv * total_variation_loss(image),
    }
    if targets.temporal is not None:
        terms["temporal"] = weights.temporal * temporal_loss(image, *targets.temporal)
    terms["total"] = tf.add_n(list(terms.values()))
    return terms
