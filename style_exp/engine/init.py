"""Where optimisation starts (the ``init`` config group): noise, the photo, a painting or a file.

Gatys et al. start from white noise; starting from the photo keeps more of it for the
same number of steps. Any start can be blended with noise so that runs of different
seeds differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from style_exp.engine.images import load_image, resize
from style_exp.engine.weights import IMAGENET_MEAN_RGB
from style_exp.spec.settings import ConfigError, check_choice, check_non_negative

INIT_KINDS = ("noise", "content", "style", "image")


@dataclass
class InitSettings:
    kind: str = "noise"  # noise | content | style | image
    path: str | None = None  # the image for kind=image
    noise_scale: float = 0.256  # std of the noise around the mean pixel (0..255 units)
    noise_ratio: float = 0.0  # blend: (1 - r) * start image + r * noise

    def check(self, prefix: str = "") -> None:
        check_choice(f"{prefix}kind", self.kind, INIT_KINDS)
        if self.kind == "image" and not self.path:
            raise ConfigError(f"kind=image needs {prefix}path=FILE", f"{prefix}kind")
        check_non_negative(f"{prefix}noise_scale", self.noise_scale)
        if not 0.0 <= self.noise_ratio <= 1.0:
            raise ConfigError(f"must be in [0, 1], got {self.noise_ratio}", f"{prefix}noise_ratio")


def initial_image(settings: InitSettings, content: np.ndarray, styles: list[np.ndarray],
                  rng: np.random.Generator) -> np.ndarray:
    """The start image at the content's size, blended with ``noise_ratio`` of noise."""
    size = (content.shape[1], content.shape[0])
    noise = np.clip(IMAGENET_MEAN_RGB + rng.normal(0.0, settings.noise_scale, content.shape),
                    0.0, 255.0).astype(np.float32)
    start = {
        "noise": lambda: noise,
        "content": lambda: content,
        "style": lambda: resize(styles[0], size),
        "image": lambda: resize(load_image(settings.path), size),
    }[settings.kind]()
    ratio = settings.noise_ratio
    return ((1.0 - ratio) * start + ratio * noise).astype(np.float32)
