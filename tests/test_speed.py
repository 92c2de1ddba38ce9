"""Precision, XLA, tracing and the work counter behind the speed benchmark."""

from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from conftest import gradient_image, stripes_image

from style_exp.app.parse import parse
from style_exp.engine.losses import loss_terms
from style_exp.engine.objective import Problem, build_network, compute_targets
from style_exp.engine.progress import Result
from style_exp.engine.stylize import stylize
from style_exp.engine.vgg import VGG19Features
from style_exp.engine.weights import IMAGENET_MEAN_RGB
from style_exp.spec.loss import LossSettings
from style_exp.spec.settings import AdamSettings, ConfigError, LBFGSSettings, LoopSettings

LOSS = LossSettings().weights()


@pytest.fixture(scope="module")
def problem():
    return Problem(gradient_image(40, 56), [stripes_image(48, 48)], [1.0], LOSS)


def _noise(shape):
    return IMAGENET_MEAN_RGB + np.random.default_rng(0).normal(0, 0.256, shape).astype(np.float32)


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_low_precision_runs_convolutions_low_and_keeps_the_loss(weights, problem, precision):
    network = build_network(weights, LOSS, "max", precision)
    features = network(tf.constant(problem.content[None]))
    assert features["relu4_2"].dtype == tf.as_dtype(precision)
    # The same image scored by both networks: the loss terms agree within 2%.
    image = tf.constant((0.5 * problem.content + 0.5 * stripes_image(40, 56))[None])
    full_network = build_network(weights, LOSS, "max")
    terms = [loss_terms(net(image), image, compute_targets(net, problem), LOSS)
             for net in (network, full_network)]
    for name in ("content", "style", "total"):
        assert float(terms[0][name]) == pytest.approx(float(terms[1][name]), rel=0.02)
    assert terms[0]["total"].dtype == tf.float32
    result = stylize(problem, network, _noise(problem.content.shape),
                     LoopSettings(optimizer=AdamSettings(), log_every=20), 20)
    assert result.image.dtype == np.float32
    assert result.metrics["loss/total"] < 0.5 * result.history[0][1]["loss/total"]


def _run_recording_steps(monkeypatch: pytest.MonkeyPatch, *args: Any,
                         **kwargs: Any) -> tuple[Result, list[Any]]:
    """``stylize(*args, **kwargs)`` and the ``tf.function``s it made on the way: its step."""
    made, real_function = [], tf.function

    def recording(*f_args: Any, **f_kwargs: Any) -> Any:
        made.append(real_function(*f_args, **f_kwargs))
        return made[-1]

    with monkeypatch.context() as patch:
        patch.setattr(tf, "function", recording)
        result = stylize(*args, **kwargs)
    return result, made


def test_xla_step_is_compiled_by_xla_and_matches_the_plain_step(weights, problem, monkeypatch):
    """Matching losses alone would pass if ``loop.xla`` were dropped on the way: only a
    function marked for XLA yields XLA's program (HLO), and the plain one must not."""
    network = build_network(weights, LOSS, "max")
    init = _noise(problem.content.shape)
    targets = compute_targets(network, problem)
    compiled, compiled_steps = _run_recording_steps(
        monkeypatch, problem, network, init,
        LoopSettings(optimizer=AdamSettings(), log_every=5, xla=True), 5)
    plain, plain_steps = _run_recording_steps(
        monkeypatch, problem, network, init, LoopSettings(optimizer=AdamSettings(), log_every=5), 5)
    assert len(compiled_steps) == len(plain_steps) == 1  # Adam's loop compiles one step
    assert "HloModule" in compiled_steps[0].experimental_get_compiler_ir(targets)(stage="hlo")
    with pytest.raises(ValueError, match="jit_compile"):
        plain_steps[0].experimental_get_compiler_ir(targets)
    assert compiled.metrics["loss/total"] == pytest.approx(plain.metrics["loss/total"], rel=1e-3)


def test_lbfgs_step_compiles_with_xla_and_matches_the_plain_step(weights, problem):
    """L-BFGS's step writes its memory at a slot known only at run time, which XLA
    compiles only as a scatter: ``xla=true`` must work with the default optimiser."""
    network = build_network(weights, LOSS, "max")
    init = _noise(problem.content.shape)
    runs = [stylize(problem, network, init,
                    LoopSettings(optimizer=LBFGSSettings(), log_every=5, xla=xla), 5)
            for xla in (True, False)]
    assert runs[0].steps == runs[1].steps == 5
    assert runs[0].metrics["loss/total"] == pytest.approx(runs[1].metrics["loss/total"],
                                                          rel=1e-2)


def test_the_step_is_traced_once(weights, problem, monkeypatch):
    network = build_network(weights, LOSS, "max")
    traces = []
    original = VGG19Features.__call__
    monkeypatch.setattr(VGG19Features, "__call__",
                        lambda self, images: traces.append(1) or original(self, images))
    stylize(problem, network, _noise(problem.content.shape),
            LoopSettings(optimizer=AdamSettings(), log_every=3), 12)
    # One eager call for the content target, one per style, one trace of the step.
    assert len(traces) == 1 + len(problem.styles) + 1


def test_multiply_adds_by_hand(weights):
    shallow = VGG19Features(weights, ["relu2_1"], "max")
    # conv1_1: 8*6*9*3*64, conv1_2: 8*6*9*64*64, pool -> 4x3, conv2_1: 4*3*9*64*128
    expected = 8 * 6 * 9 * 3 * 64 + 8 * 6 * 9 * 64 * 64 + 4 * 3 * 9 * 64 * 128
    assert shallow.multiply_adds(8, 6) == expected
    # Odd sizes round up under SAME pooling: 7x5 -> 4x3.
    assert shallow.multiply_adds(7, 5) == 7 * 5 * 9 * (3 * 64 + 64 * 64) + 4 * 3 * 9 * 64 * 128


def test_precision_and_threads_are_validated(compose_config):
    with pytest.raises(ConfigError, match=r"must be one of.* \(precision\)"):
        parse(compose_config(["precision=int8"]))
    with pytest.raises(ConfigError, match=r"must be non-negative.* \(threads.intra_op\)"):
        parse(compose_config(["threads.intra_op=-1"]))
    parse(compose_config(["precision=bfloat16", "xla=true", "threads.intra_op=2"]))
