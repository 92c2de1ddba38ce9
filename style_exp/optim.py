"""Optimisers that update the image in place inside the compiled step."""

from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf


@dataclass(frozen=True)
class AdamSettings:
    """Adam's hyper-parameters (Kingma & Ba), defaults as the seed's implementation."""

    lr: float = 10.0
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8


class Adam(tf.Module):
    """Adam on a single image variable.

    Written out rather than taken from Keras so the update is plain TF ops that
    live in the same ``tf.function`` as the loss, with the learning rate as a
    function of the step that schedules can replace.
    """

    def __init__(self, variable: tf.Variable, settings: AdamSettings):
        super().__init__(name="adam")
        self.settings = settings
        self.m = tf.Variable(tf.zeros_like(variable), trainable=False)
        self.v = tf.Variable(tf.zeros_like(variable), trainable=False)
        self.t = tf.Variable(0.0, trainable=False)

    def learning_rate(self, step: tf.Tensor) -> tf.Tensor:
        """The learning rate at ``step`` (1-based)."""
        del step
        return tf.constant(self.settings.lr, tf.float32)

    def apply(self, variable: tf.Variable, gradient: tf.Tensor) -> tf.Tensor:
        """One bias-corrected Adam update; returns the learning rate used."""
        s = self.settings
        t = self.t.assign_add(1.0)
        lr = self.learning_rate(t)
        self.m.assign(s.beta1 * self.m + (1.0 - s.beta1) * gradient)
        self.v.assign(s.beta2 * self.v + (1.0 - s.beta2) * tf.square(gradient))
        step_size = lr * tf.sqrt(1.0 - s.beta2**t) / (1.0 - s.beta1**t)
        variable.assign_sub(step_size * self.m / (tf.sqrt(self.v) + s.epsilon))
        return lr
