"""The loss's settings (the ``loss`` config group) and the normalised weights the engine uses.

:class:`LossSettings` is what a person sets: the terms' weights (the seed code's
5 / 500 / 100 by default), the layers and optional per-layer weights.
:meth:`LossSettings.weights` checks them and gives :class:`LossWeights`, each layer
list's weights scaled to sum 1, which is all ``engine/losses.py`` needs.

The style statistic is a config group of its own (``loss/style=gram|mean_std|wasserstein``):
one settings class per statistic in :data:`STYLE_STATISTICS`, its YAML in
``conf/loss/style/`` and its equations and function in ``engine/losses.py``. To add
one: a class here with a ``check``, its entry, its YAML, its function and a test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from style_exp.spec.settings import VGG19_LAYERS, ConfigError, check_non_negative, check_positive

CONTENT_LAYERS = ("relu4_2",)
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")


@dataclass(frozen=True)
class ScaledStatistic:
    """What every style statistic has: a factor on the style term."""

    # Multiplies the style term. The Gram's is the seed's 1; the others' bring the style
    # gradient at the photo to the Gram's size (geometric mean over three pairs at 256 px:
    # mean_std 2.1, wasserstein 1.7), so style_weight keeps its balance with content
    # (README, "Style statistics").
    scale: float = 1.0

    def check(self, prefix: str = "") -> None:
        check_positive(f"{prefix}scale", self.scale)


@dataclass(frozen=True)
class GramSettings(ScaledStatistic):
    """The seed's statistic: the Gram matrix of each style layer's features."""

    name: ClassVar[str] = "gram"  # its option in the loss/style group


@dataclass(frozen=True)
class MeanStdSettings(ScaledStatistic):
    """Each channel's mean and standard deviation (the statistics AdaIN matches)."""

    name: ClassVar[str] = "mean_std"
    scale: float = 2.0


@dataclass(frozen=True)
class WassersteinSettings(ScaledStatistic):
    """The 2-Wasserstein distance between Gaussians fitted to the features (mean, covariance)."""

    name: ClassVar[str] = "wasserstein"
    scale: float = 2.0
    # Added to both covariances' diagonals, relative to the style's mean variance: keeps
    # the square root's gradient finite where features are rank-deficient (small layers).
    ridge: float = 1e-3

    def check(self, prefix: str = "") -> None:
        super().check(prefix)
        check_non_negative(f"{prefix}ridge", self.ridge)


StatisticSettings = GramSettings | MeanStdSettings | WassersteinSettings
# The loss/style group's names (``loss/style=NAME``) and their settings.
STYLE_STATISTICS: dict[str, type[StatisticSettings]] = {
    settings.name: settings for settings in (GramSettings, MeanStdSettings, WassersteinSettings)}


TERMS = ("content", "style", "tv", "temporal")  # the weighted terms of the loss


@dataclass(frozen=True)
class LossWeights:
    """How much each term and layer counts; layer weights are already normalised."""

    content: float
    style: float
    tv: float
    content_layers: Mapping[str, float]
    style_layers: Mapping[str, float]
    temporal: float = 0.0
    statistic: StatisticSettings = GramSettings()  # what the style term compares

    @property
    def layers(self) -> list[str]:
        """Every layer a term reads, content's first."""
        return [*self.content_layers, *self.style_layers]

    @property
    def term_weights(self) -> dict[str, float]:
        """The weight of each term: a compiled step takes them as arguments."""
        return {name: getattr(self, name) for name in TERMS}

    def with_term_weights(self, weights: Mapping[str, Any]) -> LossWeights:
        """These weights with each term's weight replaced (by a tensor, in a traced step)."""
        return dataclasses.replace(self, **weights)

    @property
    def structure(self) -> LossWeights:
        """Everything but the term weights: what a compiled step is built around, so one
        trace serves a sweep over ``loss.style_weight`` (or any term's weight)."""
        return self.with_term_weights(dict.fromkeys(TERMS, 0.0))


@dataclass(frozen=True)
class LossSettings:
    """The loss as configured: term weights, layers, per-layer weights (default: equal)."""

    content_weight: float = 5.0
    style_weight: float = 500.0
    tv_weight: float = 100.0
    content_layers: tuple[str, ...] = CONTENT_LAYERS
    content_layer_weights: tuple[float, ...] | None = None  # default: equal
    style_layers: tuple[str, ...] = STYLE_LAYERS
    style_layer_weights: tuple[float, ...] | None = None  # default: equal
    style_layer_exponent: float = 1.0  # layer l (0-based) weighted by exponent**l

    def check(self, prefix: str = "") -> None:
        self.weights(prefix)

    def weights(self, prefix: str = "",
                statistic: StatisticSettings = GramSettings()) -> LossWeights:
        """The weights the engine uses, every layer list's weights normalised, comparing
        ``statistic``; raises :class:`ConfigError` naming the key (under ``prefix``) of a
        bad value."""
        statistic.check(f"{prefix}style.")
        for name in ("content_weight", "style_weight", "tv_weight"):
            check_non_negative(f"{prefix}{name}", getattr(self, name))
        content = layer_weights(f"{prefix}content_layers", self.content_layers,
                                self.content_layer_weights)
        check_positive(f"{prefix}style_layer_exponent", self.style_layer_exponent)
        style = layer_weights(f"{prefix}style_layers", self.style_layers,
                              self.style_layer_weights, self.style_layer_exponent)
        return LossWeights(self.content_weight, self.style_weight, self.tv_weight, content, style,
                           statistic=statistic)


def normalised(key: str, values: Sequence[float]) -> tuple[float, ...]:
    """Non-negative weights scaled to sum 1; ``key`` names them in the error."""
    values = [float(w) for w in values]
    if any(w < 0 for w in values) or sum(values) <= 0:
        raise ConfigError(f"must be non-negative and not all zero, got {values}", key)
    return tuple(w / sum(values) for w in values)


def blend_weights(weights: Sequence[float] | None, count: int) -> tuple[float, ...]:
    """Style blend weights normalised to sum 1 (equal by default)."""
    if weights is None:
        return (1.0 / count,) * count
    values = [float(w) for w in weights]
    if len(values) != count:
        raise ConfigError(f"style_weights has {len(values)} value(s) {values} but there are "
                          f"{count} style image(s)", "style_weights", "give one weight per style")
    return normalised("style_weights", values)


def layer_weights(key: str, layers: Sequence[str], weights: Sequence[float] | None,
                  exponent: float = 1.0) -> dict[str, float]:
    """Per-layer weights for ``layers``, times ``exponent**l`` for the l-th, normalised.

    An exponent above 1 shifts the emphasis towards the later (coarser) layers.
    """
    if not layers:
        raise ConfigError("at least one layer is needed", key)
    unknown = [name for name in layers if name not in VGG19_LAYERS]
    if unknown:
        raise ConfigError(f"unknown VGG-19 layer(s) {unknown}", key, "use names like relu4_2")
    if len(set(layers)) != len(layers):
        raise ConfigError(f"layers are repeated in {list(layers)}", key)
    weights_key = key.replace("layers", "layer_weights")
    values = [1.0] * len(layers) if weights is None else [float(w) for w in weights]
    if len(values) != len(layers):
        raise ConfigError(f"{len(values)} values for {len(layers)} layers", weights_key)
    scaled = [w * exponent**index for index, w in enumerate(values)]
    return dict(zip(layers, normalised(weights_key, scaled), strict=True))
