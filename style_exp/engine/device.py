"""TensorFlow runtime set-up: threads, GPU memory growth, what the step runs on, and
which 16-bit format that hardware computes natively.

``configure`` is called once per process before any TensorFlow op runs (thread pools
cannot be resized afterwards). TensorFlow is imported inside the functions that need
it, so the CPU checks work (and are tested) without loading it.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

# CPU flags (as /proc/cpuinfo names them) of native bfloat16 dot products: AVX512_BF16
# (Cooper Lake, Zen 4 and newer) and AMX (Sapphire Rapids and newer).
BFLOAT16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# NVIDIA GPUs compute bfloat16 natively from compute capability 8.0 (Ampere) on.
BFLOAT16_GPU_CAPABILITY = (8, 0)
# Tells oneDNN (TensorFlow's CPU kernels) that convolution filters never change, so each
# convolution keeps its filter in oneDNN's blocked layout instead of re-ordering it on every
# call: float32 steps take about 0.92 of the time (README, "Speed"). TensorFlow reads it
# once per process, at the first convolution (``AreWeightsFrozen``, a call_once); safe
# because VGG19Features never runs a convolution eagerly.
FROZEN_WEIGHTS_ENV = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"


def configure(intra_op_threads: int = 0, inter_op_threads: int = 0) -> None:
    """Thread pools (0 = TensorFlow's choice: one intra-op thread per core), oneDNN's
    filter cache and, on GPUs, memory growth so a run takes what it needs rather than
    the whole card."""
    import tensorflow as tf

    with contextlib.suppress(RuntimeError):  # already initialised: keep what is there
        tf.config.threading.set_intra_op_parallelism_threads(intra_op_threads)
        tf.config.threading.set_inter_op_parallelism_threads(inter_op_threads)
    for gpu in tf.config.list_physical_devices("GPU"):
        with contextlib.suppress(RuntimeError):
            tf.config.experimental.set_memory_growth(gpu, True)
    cache_frozen_weights()  # runs a convolution, so it comes after what needs none yet


def cache_frozen_weights() -> None:
    """Turns on oneDNN's filter cache for this process only (unless the environment
    already says otherwise, e.g. ``0`` to opt out or ``memory.configure_for_tiles``).

    TensorFlow reads the variable once, at the process's first convolution, so it is set
    just for a one-pixel convolution on the CPU and then removed again: child processes
    (a test suite's, a sweep's) start with the environment they would have had, rather
    than inheriting a setting meant for this process's network. A 1x1x1x1 filter shares
    the eager filter cache with no filter VGG19Features has. When a convolution ran in
    this process before, the value TensorFlow read then stays, as it always would.
    """
    import tensorflow as tf

    if FROZEN_WEIGHTS_ENV in os.environ:
        return
    os.environ[FROZEN_WEIGHTS_ENV] = "1"
    try:
        with tf.device("/CPU:0"):
            pixel = tf.zeros((1, 1, 1, 1))
            tf.nn.conv2d(pixel, tf.zeros((1, 1, 1, 1)), 1, "VALID")
    finally:
        del os.environ[FROZEN_WEIGHTS_ENV]


def describe_device() -> str:
    """The device the step runs on: the first GPU if there is one, else the CPU model."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU: {details.get('device_name', gpus[0].name)}"
    return f"CPU: {cpu_name()} ({_cpu_count()} cores)"


def native_low_precision() -> str:
    """"bfloat16" where the device the step runs on computes it natively, else "float32".

    The first GPU decides if there is one (the step runs there), else the CPU. Elsewhere
    bfloat16 is emulated and slower than float32, so float32 is the safe answer.
    """
    capabilities = gpu_compute_capabilities()
    if capabilities:
        native = capabilities[0] >= BFLOAT16_GPU_CAPABILITY
    else:
        native = cpu_has_native_bfloat16()
    return "bfloat16" if native else "float32"


def compute_precision(precision: str) -> str:
    """The precision the convolutions run in: ``precision``, with ``auto`` resolved for the
    device the step runs on (imports TensorFlow to look for GPUs)."""
    return native_low_precision() if precision == "auto" else precision


def host_precision(precision: str) -> str:
    """``compute_precision`` as far as the CPU decides it, without importing TensorFlow:
    what the checks before a run (memory) assume."""
    if precision != "auto":
        return precision
    return "bfloat16" if cpu_has_native_bfloat16() else "float32"


def cpu_has_native_bfloat16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU (or the given /proc/cpuinfo flags) has bfloat16 dot products."""
    return bool(BFLOAT16_CPU_FLAGS & (cpu_flags() if flags is None else flags))


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo; empty where there is no such file."""
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """(major, minor) of each visible GPU, in TensorFlow's order (imports TensorFlow)."""
    import tensorflow as tf

    return [tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability",
                                                                    (0, 0)))
            for gpu in tf.config.list_physical_devices("GPU")]


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
