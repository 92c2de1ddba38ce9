"""TensorFlow runtime set-up: threads, GPU memory growth, and what the step runs on.

Called once per process before any TensorFlow op runs (thread pools cannot be
resized afterwards).
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import tensorflow as tf


def configure(intra_op_threads: int = 0, inter_op_threads: int = 0) -> None:
    """Thread pools (0 = TensorFlow's choice: one intra-op thread per core) and, on GPUs,
    memory growth so a run takes what it needs rather than the whole card."""
    with contextlib.suppress(RuntimeError):  # already initialised: keep what is there
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)


def describe() -> str:
    """The device the step runs on: the first GPU if there is one, else the CPU model."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU: {details.get('device_name', gpus[0].name)}"
    return f"CPU: {cpu_name()} ({_cpu_count()} cores)"


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
