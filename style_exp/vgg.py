"""VGG-19 as a feature extractor: constant weights, truncated at the deepest layer in use."""

from __future__ import annotations

import tensorflow as tf

from style_exp.weights import POOLING, VGG19_LAYERS, VGGWeights


class VGG19Features(tf.Module):
    """Maps an RGB image batch in 0..255 to the activations of the requested layers.

    Weights are ``tf.constant`` so no gradient is ever computed for them, and layers
    after the deepest requested one are never built.
    """

    def __init__(self, weights: VGGWeights, layers: list[str] | tuple[str, ...],
                 pooling: str = "max"):
        super().__init__(name="vgg19")
        unknown = [name for name in layers if name not in VGG19_LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG-19 layer(s) {unknown}; known: {', '.join(VGG19_LAYERS)}")
        if pooling not in POOLING:
            raise ValueError(f"pooling must be one of {POOLING}, got {pooling!r}")
        self.outputs = tuple(dict.fromkeys(layers))
        deepest = max(VGG19_LAYERS.index(name) for name in self.outputs)
        self.layers = VGG19_LAYERS[: deepest + 1]
        self.pooling = pooling
        self.mean = tf.constant(weights.mean_rgb.reshape(1, 1, 1, 3), tf.float32)
        self.kernels = {
            name: tf.constant(weights.kernels[name], tf.float32)
            for name in self.layers if name.startswith("conv")
        }
        self.biases = {
            name: tf.constant(weights.biases[name], tf.float32)
            for name in self.kernels
        }

    def __call__(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        x = images - self.mean
        features = {}
        for name in self.layers:
            kind = name[:4]
            if kind == "conv":
                x = tf.nn.conv2d(x, self.kernels[name], strides=1, padding="SAME")
                x = tf.nn.bias_add(x, self.biases[name])
            elif kind == "relu":
                x = tf.nn.relu(x)
            elif self.pooling == "avg":
                x = tf.nn.avg_pool2d(x, ksize=2, strides=2, padding="SAME")
            else:
                x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="SAME")
            if name in self.outputs:
                features[name] = x
        return features
