"""Where optimisation starts (the ``init`` config group): noise, the photo, a painting or a file.

Gatys et al. start from white noise; starting from the photo keeps more of it for the
same number of steps. ``recolor`` gives the start the paintings' colours first (an
affine map to their RGB mean and covariance, as ``color=histogram`` does the other way
round), so the optimiser need not move every pixel's colour step by step. Any start can
be blended with noise so that runs of different seeds differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from style_exp.engine.color import match_color_statistics
from style_exp.engine.images import load_image, resize
from style_exp.engine.weights import IMAGENET_MEAN_RGB
from style_exp.spec.settings import InitSettings


def initial_image(settings: InitSettings, content: np.ndarray, styles: list[np.ndarray],
                  rng: np.random.Generator, blend: Sequence[float] | None = None) -> np.ndarray:
    """The start image at the content's size, recoloured to the styles' colours (mixed
    by ``blend``, default equal) if ``settings.recolor``, blended with ``noise_ratio`` of
    noise."""
    size = (content.shape[1], content.shape[0])
    noise = np.clip(IMAGENET_MEAN_RGB + rng.normal(0.0, settings.noise_scale, content.shape),
                    0.0, 255.0).astype(np.float32)
    start = {
        "noise": lambda: noise,
        "content": lambda: content,
        "style": lambda: resize(styles[0], size),
        "image": lambda: resize(load_image(settings.path), size),
    }[settings.kind]()
    if settings.recolor:
        start = recolored(start, styles, blend or [1.0] * len(styles))
    ratio = settings.noise_ratio
    return ((1.0 - ratio) * start + ratio * noise).astype(np.float32)


def recolored(image: np.ndarray, styles: list[np.ndarray], blend: Sequence[float]) -> np.ndarray:
    """``image`` with the RGB mean and covariance of the styles' pixels pooled, each
    painting weighted by its blend weight whatever its size."""
    pixels = np.concatenate([style.reshape(-1, 3) for style in styles])
    weights = np.concatenate([np.full(style.size // 3, share / (style.size // 3))
                              for style, share in zip(styles, blend, strict=True)])
    return match_color_statistics(image, pixels, weights)
