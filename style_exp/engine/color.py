"""Colour preservation (Gatys et al., "Preserving Color in Neural Artistic Style Transfer").

Two ways to keep the photo's colours while taking the painting's texture:

- ``luminance``: stylise the luminance only. Content and styles become grey images
  of their luma (the style's luma matched to the content's mean and spread), and
  the result's luma is recombined with the content's chroma (YIQ's I and Q).
- ``histogram``: recolour each style image so its colour mean and covariance equal
  the content's, then stylise as usual.
"""

from __future__ import annotations

import numpy as np

COLOR_MODES = ("none", "luminance", "histogram")

_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]],
    dtype=np.float64,
)
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def rgb_to_yiq(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ _RGB_TO_YIQ.T


def yiq_to_rgb(image: np.ndarray) -> np.ndarray:
    return image @ _YIQ_TO_RGB.T


def luminance_only(image: np.ndarray, reference: np.ndarray | None = None) -> np.ndarray:
    """The image's luma as a grey RGB image; matched to ``reference``'s mean and spread."""
    luma = rgb_to_yiq(image)[..., 0]
    if reference is not None:
        target = rgb_to_yiq(reference)[..., 0]
        luma = (luma - luma.mean()) * (target.std() / max(luma.std(), 1e-6)) + target.mean()
    grey = np.clip(luma, 0.0, 255.0)
    return np.repeat(grey[..., None], 3, axis=2).astype(np.float32)


def with_content_chroma(stylised: np.ndarray, content: np.ndarray) -> np.ndarray:
    """Combine the stylised image's luma with the content's chroma (I, Q)."""
    yiq = rgb_to_yiq(content)
    yiq[..., 0] = rgb_to_yiq(stylised)[..., 0]
    return np.clip(yiq_to_rgb(yiq), 0.0, 255.0).astype(np.float32)


def match_color_statistics(style: np.ndarray, content: np.ndarray,
                           weights: np.ndarray | None = None) -> np.ndarray:
    """Affinely recolour ``style`` so its RGB mean and covariance equal the content's.

    x' = A (x - mu_s) + mu_c with A = Sigma_c^(1/2) Sigma_s^(-1/2) (symmetric roots).
    ``content`` may be any array of RGB pixels, e.g. several images' pooled, with
    ``weights`` per pixel (a blend of paintings: each weighted by its share).
    """
    pixels_s = style.reshape(-1, 3).astype(np.float64)
    pixels_c = content.reshape(-1, 3).astype(np.float64)
    mean_s, mean_c = pixels_s.mean(axis=0), np.average(pixels_c, axis=0, weights=weights)
    transform = (_sqrtm(np.cov(pixels_c.T, aweights=weights), 0.5)
                 @ _sqrtm(np.cov(pixels_s.T), -0.5))
    matched = (pixels_s - mean_s) @ transform.T + mean_c
    return np.clip(matched, 0.0, 255.0).reshape(style.shape).astype(np.float32)


def _sqrtm(covariance: np.ndarray, power: float) -> np.ndarray:
    """Symmetric matrix power via eigendecomposition (regularised for flat images)."""
    values, vectors = np.linalg.eigh(covariance + 1e-3 * np.eye(3))
    return (vectors * np.maximum(values, 1e-6) ** power) @ vectors.T


def prepare(content: np.ndarray, styles: list[np.ndarray],
            mode: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Content and styles as the optimiser should see them under ``mode``."""
    if mode == "luminance":
        return luminance_only(content), [luminance_only(s, content) for s in styles]
    if mode == "histogram":
        return content, [match_color_statistics(s, content) for s in styles]
    if mode == "none":
        return content, styles
    raise ValueError(f"unknown colour mode {mode!r}; choose from {COLOR_MODES}")


def finish(stylised: np.ndarray, content: np.ndarray, mode: str) -> np.ndarray:
    """The final image under ``mode`` (luminance mode puts the content's colours back)."""
    return with_content_chroma(stylised, content) if mode == "luminance" else stylised
