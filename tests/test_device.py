"""Which 16-bit format the hardware computes natively, decided without running anything;
oneDNN's filter cache."""

import os
import subprocess
import sys

import pytest
from conftest import PROJECT

from style_exp.engine import device

SAPPHIRE_RAPIDS = "fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile"
SKYLAKE = "fpu sse2 avx2 avx512f avx512bw"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Xeon\nflags\t\t: {SKYLAKE}\n\n"
                       f"processor\t: 1\nflags\t\t: {SKYLAKE}\n")
    assert device.cpu_flags(cpuinfo) == frozenset(SKYLAKE.split())
    assert device.cpu_flags(tmp_path / "missing") == frozenset()


@pytest.mark.parametrize(("flags", "native"), [
    (SAPPHIRE_RAPIDS, True), ("avx512f avx512_bf16", True), ("avx2 amx_bf16", True),
    (SKYLAKE, False), ("", False),
])
def test_cpu_bfloat16_needs_avx512_bf16_or_amx(flags, native):
    assert device.cpu_has_native_bfloat16(frozenset(flags.split())) is native


@pytest.mark.parametrize(("gpus", "flags", "expected"), [
    ([], SAPPHIRE_RAPIDS, "bfloat16"),
    ([], SKYLAKE, "float32"),
    ([(8, 0)], SKYLAKE, "bfloat16"),  # an A100 decides, whatever the CPU
    ([(9, 0), (7, 5)], SKYLAKE, "bfloat16"),  # the first GPU runs the step
    ([(7, 5)], SAPPHIRE_RAPIDS, "float32"),  # a T4: emulated bfloat16 on the GPU
])
def test_native_low_precision_follows_the_device_of_the_step(monkeypatch, gpus, flags,
                                                             expected):
    monkeypatch.setattr(device, "gpu_compute_capabilities", lambda: gpus)
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset(flags.split()))
    assert device.native_low_precision() == expected


def test_the_cpu_check_does_not_import_tensorflow():
    code = ("import sys; from style_exp.engine import device; device.cpu_has_native_bfloat16(); "
            "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PROJECT)


def test_native_low_precision_answers_on_this_machine():
    assert device.native_low_precision() in ("bfloat16", "float32")


@pytest.mark.parametrize(("requested", "flags", "expected"), [
    ("auto", SAPPHIRE_RAPIDS, "bfloat16"), ("auto", SKYLAKE, "float32"),
    ("float32", SAPPHIRE_RAPIDS, "float32"), ("bfloat16", SKYLAKE, "bfloat16"),
])
def test_auto_precision_is_resolved_and_explicit_ones_are_kept(monkeypatch, requested, flags,
                                                               expected):
    monkeypatch.setattr(device, "gpu_compute_capabilities", lambda: [])
    monkeypatch.setattr(device, "cpu_flags", lambda: frozenset(flags.split()))
    assert device.compute_precision(requested) == expected
    assert device.host_precision(requested) == expected  # what the memory check assumes


FILTER_CACHE_PROBE = """
import dataclasses, os, subprocess, sys
import numpy as np
import tensorflow as tf
from style_exp.engine import device
from style_exp.engine.vgg import VGG19Features
from style_exp.engine.weights import load_weights

device.configure()
weights = load_weights()
halved = dataclasses.replace(weights, kernels={k: v / 2 for k, v in weights.kernels.items()},
                             biases={k: v / 2 for k, v in weights.biases.items()})
image = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, 32, 32, 3)), tf.float32)
call = VGG19Features.__call__ if sys.argv[1] == "call" else VGG19Features._forward
first, second = (call(VGG19Features(w, ["relu1_1"]), image)["relu1_1"] for w in (weights, halved))
child = [sys.executable, "-c", f"import os; print(os.environ.get({device.FROZEN_WEIGHTS_ENV!r}))"]
print(os.environ.get(device.FROZEN_WEIGHTS_ENV), subprocess.run(
    child, capture_output=True, text=True, check=True).stdout.strip())
print(float(tf.reduce_max(tf.abs(second - first / 2)) / tf.reduce_max(first)))
"""


def _probe(call: str) -> tuple[str, float]:
    """Run FILTER_CACHE_PROBE in a fresh process whose environment leaves the filter cache
    to ``device.configure``: what the variable is after it, in the process and in a child
    started after it, and the probe's relative error."""
    env = {k: v for k, v in os.environ.items() if k != device.FROZEN_WEIGHTS_ENV}
    out = subprocess.run([sys.executable, "-c", FILTER_CACHE_PROBE, call], check=True,
                         capture_output=True, text=True, cwd=PROJECT, env=env).stdout
    *_, seen, error = out.splitlines()
    return seen, float(error)


def test_the_filter_cache_never_mixes_two_networks_filters():
    """With oneDNN's frozen-filter cache on (as ``configure`` turns it on for every run), a
    second network's eager convolutions would reuse the first one's filter; VGG19Features'
    graph keeps each network's own. Halving every weight halves relu1_1 exactly.

    The setting stays in the configured process: neither its environment nor a child started
    after ``configure`` has the variable (a tiled run a test or sweep starts must not inherit
    a cache meant for an untiled network)."""
    seen, error = _probe("call")
    assert error < 1e-6
    seen_eager, error = _probe("eager")
    assert error > 0.1, "oneDNN no longer mixes eager filters: the graph detour can go"
    assert seen == seen_eager == "None None"
