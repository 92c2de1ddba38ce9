"""VGG-19 as a feature extractor: constant weights, truncated at the deepest layer in use.

The convolutions can run in a lower precision (bfloat16 on CPUs with AVX512_BF16 and
on recent GPUs, float16 on GPUs); the activations come out in that precision and the
losses cast them back to float32 before accumulating (see ``losses.py``).
"""

from __future__ import annotations

import tensorflow as tf

from style_exp.engine.weights import VGGWeights
from style_exp.spec.settings import COMPUTE_PRECISIONS, POOLING, VGG19_LAYERS


class VGG19Features(tf.Module):
    """Maps an RGB image batch in 0..255 to the activations of the requested layers.

    Weights are ``tf.constant`` so no gradient is ever computed for them, and layers
    after the deepest requested one are never built. Eager calls run through a traced
    graph: with oneDNN's filter cache on (``device.cache_frozen_weights``) an eager
    convolution would reuse the filter another network's call left in the cache, while
    each graph's convolution keeps its own.
    """

    def __init__(self, weights: VGGWeights, layers: list[str] | tuple[str, ...],
                 pooling: str = "max", precision: str = "float32"):
        super().__init__(name="vgg19")
        unknown = [name for name in layers if name not in VGG19_LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG-19 layer(s) {unknown}; known: {', '.join(VGG19_LAYERS)}")
        if pooling not in POOLING:
            raise ValueError(f"pooling must be one of {POOLING}, got {pooling!r}")
        if precision not in COMPUTE_PRECISIONS:
            raise ValueError(f"precision must be one of {COMPUTE_PRECISIONS}, got {precision!r}")
        self.compute_dtype = tf.as_dtype(precision)
        self.outputs = tuple(dict.fromkeys(layers))
        deepest = max(VGG19_LAYERS.index(name) for name in self.outputs)
        self.layers = VGG19_LAYERS[: deepest + 1]
        self.pooling = pooling
        self.mean = tf.constant(weights.mean_rgb.reshape(1, 1, 1, 3), tf.float32)
        self.kernels = {
            name: tf.constant(weights.kernels[name], self.compute_dtype)
            for name in self.layers if name.startswith("conv")
        }
        self.biases = {
            name: tf.constant(weights.biases[name], self.compute_dtype)
            for name in self.kernels
        }
        self._graph_forward = tf.function(self._forward, autograph=False)

    @property
    def gradient_scale(self) -> float:
        """Factor for the loss before differentiating (and 1/it after).

        float16's range ends at 65504, and the backward pass of a style loss in the
        1e8..1e10 range overflows it; scaling the loss down keeps the gradients in
        range (the rare tiny ones underflow, which the optimisers do not notice).
        bfloat16 has float32's range and needs no scaling.
        """
        return 2.0**-12 if self.compute_dtype == tf.float16 else 1.0

    def multiply_adds(self, height: int, width: int) -> int:
        """Multiply-adds of one forward pass of the truncated network on an image.

        Each 3x3 "SAME" convolution costs H*W*9*C_in*C_out; each 2x2 pooling halves
        H and W (rounding up). Bias, ReLU and pooling are comparatively free.
        """
        total = 0
        for name in self.layers:
            if name.startswith("conv"):
                kernel_h, kernel_w, c_in, c_out = self.kernels[name].shape
                total += height * width * kernel_h * kernel_w * c_in * c_out
            elif name.startswith("pool"):
                height, width = -(-height // 2), -(-width // 2)
        return total

    def __call__(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        if tf.executing_eagerly():
            return self._graph_forward(images)
        return self._forward(images)

    def _forward(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        x = tf.cast(images - self.mean, self.compute_dtype)
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
