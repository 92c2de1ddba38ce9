"""The embedded demo: a photo shipped by a dependency and a painting made procedurally.

`python run.py` must work with no files at all, so the content is the Grace Hopper
portrait that matplotlib ships as sample data, and the style is generated here: a
swirling brush-stroke texture (line-integral convolution of noise along a vortex
field, coloured with a night-sky palette), in the spirit of Van Gogh.
"""

from __future__ import annotations

import numpy as np
from matplotlib import cbook

from style_exp.engine.images import load_image

DEMO_PHOTO = "grace_hopper.jpg"
PAINTING_NAMES = ("night_swirls", "embers")  # what runs call the paintings of PALETTES
PALETTES = (
    # Night: deep blues to pale yellow.
    np.array([(12, 24, 64), (28, 62, 140), (62, 112, 190), (120, 170, 215),
              (235, 205, 90), (250, 240, 200)], dtype=np.float32),
    # Embers: dark red through orange to cream, for a second, contrasting style.
    np.array([(40, 8, 12), (120, 20, 20), (200, 70, 30), (240, 140, 40),
              (250, 210, 120), (255, 245, 225)], dtype=np.float32),
)  # fmt: skip


def demo_photo(longest_side: int) -> np.ndarray:
    """The demo content image (RGB float32 0..255)."""
    return load_image(demo_photo_file(), longest_side)


def demo_photo_file() -> str:
    """Where matplotlib keeps the demo photo."""
    with cbook.get_sample_data(DEMO_PHOTO) as handle:
        return handle.name


def demo_paintings(longest_side: int, count: int = 1) -> list[np.ndarray]:
    """The demo's style images: night swirls, and warm coarse strokes as the second."""
    return [demo_painting(longest_side, seed=7 + 4 * i, palette=i, grain=3 + 3 * i)
            for i in range(count)]


def demo_painting(longest_side: int, seed: int = 7, palette: int = 0,
                  grain: int = 3) -> np.ndarray:
    """A procedurally painted style image, the same for the same arguments."""
    rng = np.random.default_rng(seed)
    n = longest_side
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / n
    flow_x, flow_y = _vortex_field(x, y, rng)
    # Noise in grain x grain px blocks gives brush strokes that many pixels wide.
    blocks = rng.random((n // grain + 1, n // grain + 1), dtype=np.float32)
    noise = blocks.repeat(grain, 0).repeat(grain, 1)[:n, :n]
    strokes = _line_integral_convolution(noise, flow_x, flow_y, length=max(4, n // 16))
    # Low-frequency bands pick the colour; the strokes modulate it around that.
    bands = 0.5 + 0.5 * np.sin(6.0 * x + 4.0 * np.sin(5.0 * y) + 3.0 * flow_x)
    tone = np.clip(0.75 * bands + 1.6 * (strokes - strokes.mean()) + 0.1, 0.0, 1.0)
    colours = PALETTES[palette]
    position = tone * (len(colours) - 1)
    low = np.floor(position).astype(int).clip(0, len(colours) - 2)
    frac = (position - low)[..., None]
    return colours[low] * (1.0 - frac) + colours[low + 1] * frac


def _vortex_field(x: np.ndarray, y: np.ndarray,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors of a flow made of a few swirls plus a gentle drift."""
    fx = np.full_like(x, 0.3)
    fy = 0.15 * np.sin(8.0 * x)
    for cx, cy, spin in zip(rng.uniform(0.1, 0.9, 5), rng.uniform(0.1, 0.9, 5),
                            rng.choice([-1.0, 1.0], 5), strict=True):
        dx, dy = x - cx, y - cy
        falloff = np.exp(-(dx**2 + dy**2) / 0.03)
        fx += spin * -dy * falloff * 8.0
        fy += spin * dx * falloff * 8.0
    norm = np.hypot(fx, fy) + 1e-6
    return fx / norm, fy / norm


def _line_integral_convolution(noise: np.ndarray, flow_x: np.ndarray, flow_y: np.ndarray,
                               length: int) -> np.ndarray:
    """Average the noise along each pixel's streamline, which draws it out into strokes."""
    n = noise.shape[0]
    total = noise.copy()
    for direction in (1.0, -1.0):
        px, py = np.mgrid[0:n, 0:n].astype(np.float32)[::-1]
        for _ in range(length):
            ix = px.astype(int).clip(0, n - 1)
            iy = py.astype(int).clip(0, n - 1)
            px = px + direction * flow_x[iy, ix]
            py = py + direction * flow_y[iy, ix]
            total += noise[py.astype(int).clip(0, n - 1), px.astype(int).clip(0, n - 1)]
    return total / (2 * length + 1)
