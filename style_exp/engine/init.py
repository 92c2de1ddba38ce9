"""Where optimisation starts (the ``init`` config group): noise, the photo, a painting or a file.

Gatys et al. start from white noise; starting from the photo keeps more of it for the
same number of steps. Any start can be blended with noise so that runs of different
seeds differ.
"""

from __future__ import annotations

import numpy as np

from style_exp.engine.images import load_image, resize
from style_exp.engine.weights import IMAGENET_MEAN_RGB
from style_exp.spec.settings import InitSettings


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
