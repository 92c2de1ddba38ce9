"""The algorithm in TensorFlow: plain values in, images out, progress through a callback.
Imports nothing from ``app`` or ``cluster``, nor Hydra or MLflow."""
