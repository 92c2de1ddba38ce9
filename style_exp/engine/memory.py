"""A run's peak memory, estimated before anything is built, and what this process may use.

A run that does not fit is refused in seconds instead of growing until the kernel
kills it (and everything else on the machine with it). The estimate is arithmetic on
shapes, no TensorFlow, so the command line can check before loading anything and
``tiles=auto`` can ask how large a tile fits:

    peak = BASE + weights in use + K * activations of one forward and backward pass
           + image-sized float32 buffers (image, gradient, optimiser state, video)
           + L-BFGS' history + (tiled) the tiles' content targets

where activations are the elements of every VGG-19 layer up to the deepest one any
loss reads, at the compute precision, for the whole image or one tile with its halo.
Tiled runs keep L-BFGS' history in bfloat16 (``lbfgs.LBFGS``); their image-sized
buffers, ``TILED_IMAGE_BUFFERS``, were fitted to tiled runs' peaks. ``BASE`` (the
interpreter with TensorFlow, MLflow and the weights loaded) and ``K`` were fitted to the
peak RSS of real runs (32 to 2048 px, Adam and L-BFGS, float32 and bfloat16; worst error
13%): K comes out at 1.0, about one copy of every layer's output alive at the peak, as
the backward pass frees each gradient once used. ``python -m benchmarks.memory`` prints
estimate against measurement (README, "Benchmarks").
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from style_exp.engine.device import FROZEN_WEIGHTS_ENV
from style_exp.spec.settings import ALIGN, MIN_TILE, VGG19_LAYERS, exact_halo

MB = 2**20
BASE_BYTES = 1175 * MB  # fitted: the process with every library and the weights loaded
ACTIVATION_FACTOR = 1.0  # fitted: bytes held per activation byte at the peak of a step
DECODE_BYTES_PER_PIXEL = 24  # decoding an input: 8-bit RGB, float32 RGB, resize planes
BLOCK_CHANNELS = (64, 128, 256, 512, 512)  # VGG-19's output channels per block
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
IMAGE_BUFFERS = 6  # image, gradient, clipped candidate and step temporaries (float32 RGB)
TILED_IMAGE_BUFFERS = 6  # fitted to tiled L-BFGS runs (1024, 2048 px): the same, the tiles' sum
VIDEO_BUFFERS = 16  # frames, warped frames, flows both ways, masks, the temporal target
MMAP_THRESHOLD = 1 * MB  # tiled runs: blocks this large come from mmap, and go back on free
M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number (malloc.h)


@dataclass(frozen=True)
class Workload:
    """What decides a run's memory: its image sizes, network, precision and optimiser."""

    content: tuple[int, int]  # (width, height) of the image being optimised
    styles: tuple[tuple[int, int], ...]  # (width, height) of each style as the network sees it
    deepest_layer: str  # the deepest VGG-19 layer any loss reads
    precision: str  # the convolutions' dtype
    optimizer_images: int  # image-sized float32 tensors the optimiser keeps (Adam 3, L-BFGS 6)
    history_images: int = 0  # L-BFGS' (s, y) pairs, 2 x history (float32; bfloat16 if tiled)
    sources: tuple[tuple[int, int], ...] = ()  # the input files' own sizes, decoded once
    video: bool = False
    tile: int = 0  # px: the network sees crops of this side plus the halo (0: whole images)


def activation_elements(width: int, height: int, deepest_layer: str) -> int:
    """Elements of every layer's output up to ``deepest_layer`` for one image.

    Pooling ("SAME", 2x2, stride 2) halves each side rounding up, as the network does.
    """
    total = 0
    for name in VGG19_LAYERS[: VGG19_LAYERS.index(deepest_layer) + 1]:
        block = int(name[4]) - 1  # conv1_1, relu1_1, pool1: the block's number
        if name.startswith("pool"):
            width, height = -(-width // 2), -(-height // 2)
        total += width * height * BLOCK_CHANNELS[block]
    return total


def weight_elements(deepest_layer: str) -> int:
    """Kernel and bias elements of the convolutions the truncated network builds."""
    total, channels = 0, 3
    for name in VGG19_LAYERS[: VGG19_LAYERS.index(deepest_layer) + 1]:
        if name.startswith("conv"):
            out = BLOCK_CHANNELS[int(name[4]) - 1]
            total += 9 * channels * out + out
            channels = out
    return total


def device_bytes(work: Workload) -> int:
    """What lives where the network runs (the GPU if there is one): everything but BASE."""
    dtype = DTYPE_BYTES[work.precision]
    width, height = work.content
    crop_w, crop_h = _seen(work.content, work)
    step = ACTIVATION_FACTOR * dtype * activation_elements(crop_w, crop_h, work.deepest_layer)
    # A style's activations are computed once, without a gradient: about two layers live.
    styles = max((2 * dtype * activation_elements(*_seen(style, work), work.deepest_layer) // 4
                  for style in work.styles), default=0)
    image = 4 * 3 * width * height
    if (crop_w, crop_h) == (width, height):
        buffers, tiled = IMAGE_BUFFERS + work.optimizer_images + work.history_images, 0
    else:
        # L-BFGS' history is kept in bfloat16; the tiles' content targets (relu4_2's
        # grid, 512 channels) in the network's dtype.
        buffers = TILED_IMAGE_BUFFERS + work.optimizer_images + work.history_images / 2
        tiled = dtype * 512 * -(-width // 8) * -(-height // 8)
    buffers += VIDEO_BUFFERS if work.video else 0
    return int(max(step, styles) + buffers * image + tiled
               + dtype * weight_elements(work.deepest_layer))


def _seen(size: tuple[int, int], work: Workload) -> tuple[int, int]:
    """The largest image the network sees at once: a tile with its halo, or all of it."""
    width, height = size
    if not work.tile or max(width, height) <= work.tile:
        return width, height
    crop = ALIGN * -(-work.tile // ALIGN) + 2 * exact_halo([work.deepest_layer])
    return min(width, crop), min(height, crop)


def largest_tile(work: Workload, available: int) -> int:
    """The largest tile side (a multiple of 16, at least ``MIN_TILE``) whose run fits in
    ``available`` bytes; 0 when the whole image fits untiled, -1 when no tile fits."""
    if estimate_bytes(work) <= available:
        return 0
    side = largest_fitting(lambda tile: estimate_bytes(dataclasses.replace(work, tile=tile)),
                           available, max(work.content))
    side = ALIGN * (side // ALIGN)
    return side if side >= MIN_TILE else -1


def estimate_bytes(work: Workload) -> int:
    """The run's estimated peak resident memory, in bytes."""
    decoding = max((DECODE_BYTES_PER_PIXEL * w * h for w, h in work.sources), default=0)
    return BASE_BYTES + max(device_bytes(work), decoding)


def largest_fitting(need_at: Callable[[int], int], available: int, upper: int) -> int:
    """The largest ``size`` (at most ``upper``) whose need ``need_at(size)`` (bytes, growing
    with the size) fits in ``available`` bytes, 0 if none does."""
    low, high = 0, upper
    while low < high:
        middle = (low + high + 1) // 2
        if need_at(middle) <= available:
            low = middle
        else:
            high = middle - 1
    return low


@dataclass(frozen=True)
class Budget:
    """How much memory the run may use, and which limit that is."""

    bytes: int
    source: str  # e.g. "MemAvailable", "cgroup memory.max", "GPU free memory"


def host_budget() -> Budget:
    """The tighter of MemAvailable and the cgroup's limit, plus what this process holds
    already (the estimate counts the whole process)."""
    own = _own_rss()
    budgets = [Budget(_meminfo_available() + own, "MemAvailable")]
    cgroup = _cgroup_headroom()
    if cgroup is not None:
        budgets.append(Budget(cgroup + own, "cgroup memory limit"))
    return min(budgets, key=lambda budget: budget.bytes)


def gpu_budget() -> Budget | None:
    """Free memory of the first visible NVIDIA GPU (``nvidia-smi``), None without one."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "0") in ("", "-1") or not shutil.which(
            "nvidia-smi"):
        return None
    try:
        output = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, timeout=10, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    return Budget(int(output[0]) * MB, "GPU free memory") if output else None


def _meminfo_available() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise OSError("no MemAvailable in /proc/meminfo")


def _cgroup_headroom() -> int | None:
    """The cgroup's limit minus its usage (v2, then v1), None when unlimited or unknown."""
    for limit_file, usage_file in (
            ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
            ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
             "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:  # v1 writes "no limit" as a huge number
            return max(0, int(limit) - usage)
        return None
    return None


def _own_rss() -> int:
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def configure_for_tiles() -> None:
    """Set the process up for a tiled run, before TensorFlow loads: freed tensors go back
    to the kernel, and no filter copy is kept per tile shape.

    A tiled step allocates and frees image-sized tensors and tile activations of many
    sizes over and over. TensorFlow's oneDNN CPU allocator keeps large blocks in a pool
    of its own (a best-fit arena that never shrinks), and glibc serves blocks below its
    mmap threshold (which it raises up to 32 MB as large blocks are freed) from heaps that
    fragment and rarely shrink; between them the peak RSS of a tiled print-size run was
    about twice what its tensors need. So oneDNN allocates with malloc
    (``TF_ONEDNN_USE_SYSTEM_ALLOCATOR``, read when TensorFlow makes its allocator, hence
    before it loads) and malloc maps every block of 1 MB or more on its own (``mallopt``
    now, as ``MALLOC_MMAP_THRESHOLD_`` is read only when a process starts; the variable
    is set too, for child processes). Untiled runs keep the defaults, which are faster:
    their few tensor sizes recur every step and the pools serve them.

    oneDNN's filter cache (``device.cache_frozen_weights``) is turned off: it keeps a
    reordered copy of every filter for each input shape a convolution sees, and tiles
    come in several shapes at every scale (one step at 512x384 px in tiles of 144 px:
    1936 MB peak with it, 995 MB without).
    """
    os.environ.setdefault(FROZEN_WEIGHTS_ENV, "0")
    os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(MMAP_THRESHOLD))
    with contextlib.suppress(OSError, AttributeError):  # no glibc: other knobs, not these
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
