"""Iterate averaging (``optimizer.average=ema``): the output is the averaged image."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from conftest import gradient_image, stripes_image

from style_exp.engine.averaging import ITERATE_TOTAL
from style_exp.engine.objective import (
    Problem,
    Workspace,
    build_network,
    compute_targets,
    loss_and_gradient,
)
from style_exp.engine.stylize import rescaled, stylize, stylize_scales
from style_exp.engine.weights import IMAGENET_MEAN_RGB
from style_exp.spec.loss import LossSettings
from style_exp.spec.runspec import Scale
from style_exp.spec.settings import (
    NEVER_STOP,
    AdamSettings,
    ConfigError,
    LBFGSSettings,
    LoopSettings,
)

LOSS = LossSettings().weights()
DECAY = 0.6  # short, so a few steps weigh in visibly
STEPS = 6


@pytest.fixture(scope="module")
def network(weights):
    return build_network(weights, LOSS, "max")


@pytest.fixture(scope="module")
def problem():
    return Problem(gradient_image(32, 40), [stripes_image(32, 32)], [1.0], LOSS)


def _start(shape):
    return IMAGENET_MEAN_RGB + np.random.default_rng(0).normal(0, 8, shape).astype(np.float32)


def _run(problem, network, optimizer, log_every=1, workspace=None):
    """A run's reported steps (metrics and the image it shows) and its result."""
    seen = {}
    result = stylize(problem, network, _start(problem.content.shape),
                     LoopSettings(optimizer, NEVER_STOP, log_every, checkpoint_every=log_every),
                     STEPS, callback=lambda p: seen.__setitem__(p.step, (p.metrics, p.image)),
                     workspace=workspace)
    return seen, result


def _loss(network, problem, image):
    targets = compute_targets(network, problem)
    return float(loss_and_gradient(network, tf.constant(image[None]), targets,
                                   problem.loss)[0]["total"])


@pytest.mark.parametrize("plain", [AdamSettings(lr=5.0), LBFGSSettings()], ids=["adam", "lbfgs"])
def test_the_output_is_the_best_average_of_the_iterates(problem, network, plain):
    """The plain run's iterates, averaged by hand with Adam's bias correction, are the images
    the averaging run shows; its losses are theirs, and its output is the one of them
    with the lowest loss (not the last, not an iterate)."""
    iterates, plain_result = _run(problem, network, plain)
    averaged, result = _run(problem, network,
                            dataclasses.replace(plain, average="ema", average_decay=DECAY))
    total, weight = 0.0, 0.0
    for step in range(1, STEPS + 1):
        total = DECAY * total + (1 - DECAY) * iterates[step][1]
        weight = DECAY * weight + (1 - DECAY)
        metrics, shown = averaged[step]
        np.testing.assert_allclose(shown, total / weight, atol=0.05)
        assert metrics["loss/total"] == pytest.approx(_loss(network, problem, shown), rel=1e-3)
        assert metrics[ITERATE_TOTAL] == pytest.approx(iterates[step][0]["loss/total"],
                                                       rel=1e-3)
    best_step = min(averaged, key=lambda step: averaged[step][0]["loss/total"])
    np.testing.assert_allclose(result.image, averaged[best_step][1], atol=1e-3)
    assert np.abs(result.image - plain_result.image).max() > 1.0


def test_only_reported_averages_compete_and_a_new_start_begins_a_new_average(problem,
                                                                             network):
    """With a report every 4 steps, the output is one of the averages at steps 1, 4 and 6
    (the last is always reported). A new start in the same workspace (a video's next
    frame) averages only its own iterates, as a fresh run does; coarse to fine, each
    scale averages at its own size."""
    averaged, result = _run(problem, network, AdamSettings(average="ema", average_decay=DECAY),
                            log_every=4)
    assert sorted(averaged) == [1, 4, 6]
    losses = [metrics["loss/total"] for metrics, _ in averaged.values()]
    assert _loss(network, problem, result.image) == pytest.approx(min(losses), rel=1e-3)

    # A video's frames reuse one workspace: the next frame's average starts afresh.
    settings = LBFGSSettings(average="ema", average_decay=0.99)
    workspace = Workspace()
    _run(problem, network, settings, workspace=workspace)
    other = dataclasses.replace(problem, content=problem.content[::-1].copy())
    again, reused = _run(other, network, settings, workspace=workspace)
    fresh, alone = _run(other, network, settings)
    np.testing.assert_allclose(again[1][1], fresh[1][1], atol=1e-3)
    np.testing.assert_allclose(reused.image, alone.image, atol=1e-3)

    shown = {}
    stylize_scales(lambda side: rescaled(problem, side), (Scale(24, 2), Scale(40, 2)), network,
                   _start(problem.content.shape),
                   LoopSettings(settings, NEVER_STOP, 1, checkpoint_every=1),
                   callback=lambda p: shown.__setitem__(p.step, p.image))
    assert [shown[step].shape[:2] for step in (2, 3)] == [(19, 24), (32, 40)]


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_averaging_is_a_setting_of_both_optimisers(parse_config, optimizer):
    spec = parse_config([f"optimizer={optimizer}", "optimizer.average=ema",
                         "optimizer.average_decay=0.9"])
    assert (spec.loop.optimizer.average, spec.loop.optimizer.average_decay) == ("ema", 0.9)
    plain = parse_config([f"optimizer={optimizer}"]).loop.optimizer
    assert plain.average == "none"
    # the memory estimate counts the average and the best average measured
    assert spec.loop.optimizer.state_images() == plain.state_images() + 2
    with pytest.raises(ConfigError, match=r"must be in \(0, 1\), got 1.0") as error:
        parse_config([f"optimizer={optimizer}", "optimizer.average_decay=1"])
    assert error.value.where == "optimizer.average_decay"
    with pytest.raises(ConfigError, match="must be one of") as error:
        parse_config([f"optimizer={optimizer}", "optimizer.average=swa"])
    assert error.value.where == "optimizer.average"
