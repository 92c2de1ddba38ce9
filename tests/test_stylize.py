"""The loop used as a library: no Hydra, no MLflow."""

import numpy as np
import pytest
from conftest import gradient_image, stripes_image

from style_exp.losses import LossWeights
from style_exp.optim import AdamSettings
from style_exp.stylize import Interrupted, NoProgress, Problem, build_network, stylize
from style_exp.weights import IMAGENET_MEAN_RGB

LOSS = LossWeights(5.0, 500.0, 100.0, {"relu4_2": 1.0},
                   {f"relu{i}_1": 0.2 for i in range(1, 6)})


@pytest.fixture(scope="module")
def problem():
    return Problem(gradient_image(48, 64), [stripes_image(64, 64)], [1.0], LOSS)


@pytest.fixture(scope="module")
def network(weights):
    return build_network(weights, LOSS, "max")


def _noise(shape, seed=0):
    rng = np.random.default_rng(seed)
    return IMAGENET_MEAN_RGB + rng.normal(0, 0.256, shape).astype(np.float32)


def test_loss_falls_and_callback_reports(problem, network):
    events = []
    result = stylize(problem, network, _noise(problem.content.shape), AdamSettings(), 30,
                     log_every=10, checkpoint_every=15, callback=events.append)
    steps = [e.step for e in events]
    assert steps == [1, 10, 15, 20, 30]
    first, last = events[0].metrics["loss/total"], events[-1].metrics["loss/total"]
    assert last < 0.5 * first
    assert set(events[0].metrics) == {"loss/total", "loss/content", "loss/style", "loss/tv", "lr"}
    assert result.image.shape == problem.content.shape
    assert result.image.min() >= 0.0 and result.image.max() <= 255.0
    assert result.steps == 30 and result.setup_s > 0 and result.ms_per_iteration > 0


def test_checkpoint_images_arrive_on_their_steps(problem, network):
    images = {}
    stylize(problem, network, _noise(problem.content.shape), AdamSettings(), 20, log_every=5,
            checkpoint_every=10, callback=lambda e: images.setdefault(e.step, e.image))
    assert images[10] is not None and images[20] is not None
    assert images[5] is None and images[1] is None


def test_same_seed_same_image(problem, network):
    runs = [stylize(problem, network, _noise(problem.content.shape, seed=3), AdamSettings(), 5)
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0].image, runs[1].image)


def test_interrupt_keeps_best_image(problem, network):
    def interrupt(event):
        if event.step >= 10:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as caught:
        stylize(problem, network, _noise(problem.content.shape), AdamSettings(), 100,
                log_every=5, callback=interrupt)
    result = caught.value.result
    assert result.interrupted and result.steps == 10
    assert result.image.shape == problem.content.shape
    assert not np.allclose(result.image, _noise(problem.content.shape))


def test_diverging_loss_fails_clearly(problem, network):
    with pytest.raises(NoProgress, match="optimizer.lr"):
        stylize(problem, network, _noise(problem.content.shape), AdamSettings(lr=float("nan")), 3,
                log_every=1)


def test_network_is_truncated_at_deepest_used_layer(weights):
    shallow = build_network(weights, LossWeights(1, 1, 0, {"relu2_1": 1.0}, {"relu1_1": 1.0}),
                            "avg")
    assert shallow.layers[-1] == "relu2_1"
    assert "conv3_1" not in shallow.kernels
