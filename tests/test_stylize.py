"""The loop used as a library: no Hydra, no MLflow."""

import re
import signal

import numpy as np
import pytest
from conftest import gradient_image, stripes_image, write_image

from style_exp.engine import stopping
from style_exp.engine.images import MIN_SIDE, load_image
from style_exp.engine.objective import Problem, Workspace, build_network
from style_exp.engine.progress import RISE_LIMIT, Interrupted, NoProgress
from style_exp.engine.stylize import stylize
from style_exp.engine.weights import IMAGENET_MEAN_RGB
from style_exp.spec.loss import LossSettings
from style_exp.spec.settings import (
    NEVER_STOP,
    AdamSettings,
    LBFGSSettings,
    LoopSettings,
    StopSettings,
)

LOSS = LossSettings().weights()


@pytest.fixture(scope="module")
def problem():
    return Problem(gradient_image(48, 64), [stripes_image(64, 64)], [1.0], LOSS)


@pytest.fixture(scope="module")
def smooth():
    """A smooth 'painting': pixels thrown to 0 or 255 are far from it, so its loss shows
    an optimiser gone wild."""
    return Problem(gradient_image(48, 64), [gradient_image(64, 64, seed=1)], [1.0], LOSS)


@pytest.fixture(scope="module")
def network(weights):
    return build_network(weights, LOSS, "max")


def _noise(shape, seed=0):
    rng = np.random.default_rng(seed)
    return IMAGENET_MEAN_RGB + rng.normal(0, 0.256, shape).astype(np.float32)


def test_loss_falls_and_callback_reports(problem, network):
    events = []
    loop = LoopSettings(optimizer=AdamSettings(), log_every=10, checkpoint_every=15)
    result = stylize(problem, network, _noise(problem.content.shape), loop, 30,
                     callback=events.append)
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
    loop = LoopSettings(optimizer=AdamSettings(), log_every=5, checkpoint_every=10)
    stylize(problem, network, _noise(problem.content.shape), loop, 20,
            callback=lambda e: images.setdefault(e.step, e.image))
    assert images[10] is not None and images[20] is not None
    assert images[5] is None and images[1] is None


def test_same_seed_same_image(problem, network):
    runs = [stylize(problem, network, _noise(problem.content.shape, seed=3),
                    LoopSettings(optimizer=AdamSettings()), 5)
            for _ in range(2)]
    np.testing.assert_array_equal(runs[0].image, runs[1].image)


def test_interrupt_keeps_best_image(problem, network):
    """Adam's loss at step k is that of the image after k - 1 updates (the one delivered
    at step k - 1, the start for k = 1): that image, at the lowest loss, is what an
    interrupted run keeps, not the image after the last update."""
    start = _noise(problem.content.shape)
    seen = {0: (np.inf, start)}  # step: (loss evaluated at the step, image after its update)

    def interrupt(event):
        seen[event.step] = (event.metrics["loss/total"], event.image)
        if event.step >= 10:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as caught:
        stylize(problem, network, start,
                LoopSettings(optimizer=AdamSettings(), log_every=1, checkpoint_every=1), 100,
                callback=interrupt)
    result = caught.value.result
    assert result.interrupted and result.steps == 10
    best = min(range(1, 11), key=lambda step: seen[step][0])
    assert seen[best][0] < seen[1][0]  # the loss fell: the best image is not the start
    np.testing.assert_array_equal(result.image, seen[best - 1][1])
    assert not np.array_equal(result.image, seen[10][1])


@pytest.mark.parametrize("surfaced", [False, True], ids=["dropped", "as_another_error"])
@pytest.mark.parametrize("optimizer", [AdamSettings(), LBFGSSettings()],
                         ids=["adam", "lbfgs"])
def test_a_stop_python_lost_still_stops_the_loop_keeping_the_best_image(problem, network,
                                                                        optimizer, surfaced):
    """A signal handler's exception raised inside a weakref callback or ``__del__`` is
    printed and dropped by Python, and code that catches it may raise another exception in
    its place; either way the recorded request must stop the loop through its own handler
    (best image kept), with the signal that asked for it."""
    def lost_while_reporting(event):
        if event.step == 3:
            stopping.request(signal.SIGTERM)  # recorded; the exception itself was lost
            if surfaced:
                raise RuntimeError("interrupted")  # what some native code turns it into

    try:
        with pytest.raises(Interrupted) as caught:
            stylize(problem, network, _noise(problem.content.shape),
                    LoopSettings(optimizer=optimizer, stop=NEVER_STOP, log_every=1), 100,
                    callback=lost_while_reporting)
    finally:
        stopping.clear()
    result = caught.value.result
    assert result.interrupted and result.steps == 3  # stopped before step 4's update
    assert isinstance(caught.value.__cause__, stopping.Terminated)
    assert caught.value.__cause__.signum == signal.SIGTERM
    stylize(problem, network, _noise(problem.content.shape),
            LoopSettings(optimizer=optimizer, log_every=1), 2)


def test_a_loss_that_becomes_nan_fails_at_once_saying_so(problem, network):
    """lr=nan makes the image, so the loss of step 2, NaN: the run must stop there and name
    the NaN, not run on and blame a loss that merely never fell."""
    with pytest.raises(NoProgress) as failure:
        stylize(problem, network, _noise(problem.content.shape),
                LoopSettings(optimizer=AdamSettings(lr=float("nan")), log_every=1), 3)
    assert re.fullmatch(r"the loss became nan at step 2, from \S+ at step 1", failure.value.what)
    assert failure.value.where == "optimizer.lr=nan"


def test_a_loss_that_falls_then_ends_above_twice_its_start_fails(smooth, network):
    """A learning rate growing 10x every 2.5 steps (an exponential schedule with
    decay_rate > 1) first lowers the loss (7.4e8 to 5.5e8 by step 4), then throws the
    pixels about (2.7e10 at step 10). The best image is no longer the start, so only the
    rule on the final loss can tell this run diverged."""
    events = []
    rising = AdamSettings(lr=1.0, schedule="exponential", decay_rate=1e4, decay_steps=10)
    with pytest.raises(NoProgress) as failure:
        stylize(smooth, network, _noise(smooth.content.shape),
                LoopSettings(optimizer=rising, log_every=1), 10, callback=events.append)
    losses = [event.metrics["loss/total"] for event in events]
    assert min(losses) < losses[0] and losses[-1] > RISE_LIMIT * losses[0]
    assert failure.value.what == (f"the loss rose from {losses[0]:.3g} at step 1 to "
                                  f"{losses[-1]:.3g} at step 10")
    assert failure.value.where == "optimizer.lr=1"


def test_a_learning_rate_that_only_adds_noise_fails_naming_it(smooth, network):
    """lr=1e30 throws every pixel to 0 or 255, far from a smooth painting: the loss rises
    from the start (7.4e8 to 1e10 and more) and the best image would be the start noise."""
    with pytest.raises(NoProgress) as failure:
        stylize(smooth, network, _noise(smooth.content.shape),
                LoopSettings(optimizer=AdamSettings(lr=1e30), log_every=5), 20)
    assert failure.value.what.startswith("the loss never fell below its start")
    assert failure.value.where == "optimizer.lr=1e+30"
    assert failure.value.hint == "lower it, e.g. optimizer.lr=1e+29"


def test_lbfgs_that_cannot_take_a_step_fails(problem, network):
    """With every weight 0 the loss is 0 and no step lowers it: no result to report."""
    nothing = LossSettings(content_weight=0.0, style_weight=0.0, tv_weight=0.0).weights()
    flat = Problem(problem.content, problem.styles, [1.0], nothing)
    with pytest.raises(NoProgress, match="the loss never fell below its start, 0 at step 1"):
        stylize(flat, network, _noise(problem.content.shape),
                LoopSettings(optimizer=LBFGSSettings()), 5)


@pytest.mark.parametrize("optimizer", [AdamSettings(), LBFGSSettings()])
def test_a_very_wide_photo_is_stylised(network, tmp_path, optimizer):
    """3000x20 at size=64 would be 64x1, where the TV term has no neighbours (NaN)."""
    wide = write_image(tmp_path / "wide.png", gradient_image(20, 3000))
    tall = write_image(tmp_path / "tall.png", stripes_image(3000, 20))
    content, style = load_image(wide, 64), load_image(tall, 64)
    assert content.shape == (MIN_SIDE, 64, 3) and style.shape == (64, MIN_SIDE, 3)
    result = stylize(Problem(content, [style], [1.0], LOSS), network, _noise(content.shape),
                     LoopSettings(optimizer=optimizer, log_every=1), 4)
    assert np.isfinite(result.metrics["loss/total"]) and result.image.shape == content.shape


def test_network_is_truncated_at_deepest_used_layer(weights):
    loss = LossSettings(content_layers=("relu2_1",), style_layers=("relu1_1",)).weights()
    shallow = build_network(weights, loss, "avg")
    assert shallow.layers[-1] == "relu2_1"
    assert "conv3_1" not in shallow.kernels


@pytest.mark.parametrize(("losses", "stops"), [
    ([(1, 100.0), (10, 50.0), (20, 49.9)], True),  # 0.2% in the last 10 steps
    ([(1, 100.0), (10, 50.0), (20, 40.0)], False),  # still falling 20%
    ([(1, 100.0), (10, 50.0)], False),  # no loss a whole window back yet
    ([(1, 100.0), (10, 50.0), (15, 70.0), (20, 49.8)], True),  # a spike does not hide it
])
def test_the_stop_rule_compares_best_losses_a_window_apart(losses, stops):
    reason = StopSettings(window=10, tolerance=0.01).reason(losses)
    assert (reason is not None) is stops
    if stops:
        assert "stop.tolerance=0.01" in reason
    assert NEVER_STOP.reason(losses) is None


@pytest.mark.parametrize("optimizer", [AdamSettings(), LBFGSSettings()], ids=["adam", "lbfgs"])
def test_a_converged_run_stops_before_its_cap_and_says_why(problem, network, optimizer):
    events = []
    loose = StopSettings(window=5, tolerance=0.5)  # "converged" once the fall slows below 50%
    result = stylize(problem, network, _noise(problem.content.shape),
                     LoopSettings(optimizer=optimizer, stop=loose, log_every=1), 200,
                     callback=events.append)
    assert 5 < result.steps < 200 and result.stop_reason.startswith("converged")
    assert events[-1].step == result.steps
    capped = stylize(problem, network, _noise(problem.content.shape),
                     LoopSettings(optimizer=optimizer, stop=NEVER_STOP, log_every=1), 12)
    assert capped.steps == 12 and capped.stop_reason == "iterations"


@pytest.mark.parametrize(("optimizer", "compiled"), [(AdamSettings(), "step"),
                                                     (LBFGSSettings(), "try_step")],
                         ids=["adam", "lbfgs"])
def test_frames_sharing_a_workspace_trace_once_and_end_as_if_alone(problem, network,
                                                                   optimizer, compiled):
    """A video's frames share one Workspace: a later frame must reuse the first frame's
    compiled step, yet start clean (no moments, memory or best loss of the frame before)."""
    frame = Problem(np.roll(problem.content, 5, axis=1), problem.styles, [1.0], LOSS)
    start = _noise(frame.content.shape, seed=2)
    workspace = Workspace()
    settings = LoopSettings(optimizer=optimizer)
    stylize(problem, network, _noise(problem.content.shape, seed=1), settings, 6,
            workspace=workspace)
    loop = workspace._loop
    shared = stylize(frame, network, start, settings, 6, workspace=workspace)
    alone = stylize(frame, network, start, settings, 6)
    np.testing.assert_allclose(shared.image, alone.image, atol=1e-3)
    assert shared.metrics == pytest.approx(alone.metrics, rel=1e-6)
    assert workspace._loop is loop and getattr(loop, compiled).experimental_get_tracing_count() == 1
    wider = Problem(gradient_image(48, 80), problem.styles, [1.0], LOSS)
    stylize(wider, network, _noise(wider.content.shape), settings, 2, workspace=workspace)
    assert workspace._loop is not loop  # another size: built afresh, the old state let go


def test_a_stop_asked_for_during_a_deferred_block_is_raised_as_it_ends():
    """Writes to the tracking store run in ``stopping.deferred()``: a signal there is recorded
    and raised once the block is done (an SQLite transaction cut by it kept the store
    locked, CI); a stop recorded before the block is left to the loops."""
    reached = []
    try:
        with pytest.raises(stopping.Terminated) as raised, stopping.deferred():
            stopping.signalled(signal.SIGTERM)  # what the command line's handler does
            reached.append("after the signal")
        assert reached and raised.value.signum == signal.SIGTERM
        with stopping.deferred():
            reached.append("a later block")  # the earlier stop is not raised again here
        with pytest.raises(stopping.Terminated):
            stopping.signalled(signal.SIGHUP)  # outside a block: raised at once
    finally:
        stopping.clear()
    assert reached == ["after the signal", "a later block"]
