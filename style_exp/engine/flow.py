"""Optical flow between input frames, warping along it, and where it can be trusted.

Conventions: ``optical_flow(a, b)`` gives, for every pixel p of ``a``, the
displacement d with a(p) ~ b(p + d). ``warp(image, flow)`` samples ``image`` at
p + flow(p). So with ``backward = optical_flow(frame_t, frame_t-1)``,
``warp(stylised_t-1, backward)`` is the previous stylised frame moved onto frame t.
The consistency mask follows Ruder et al. (2016): a pixel is trusted where the
forward and backward flows undo each other and it is not on a motion boundary.
"""

from __future__ import annotations

import cv2
import numpy as np

from style_exp.spec.settings import FLOW_METHODS


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.clip(np.rint(image), 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def optical_flow(source: np.ndarray, target: np.ndarray, method: str = "dis") -> np.ndarray:
    """Dense flow (H, W, 2) in pixels, x then y, from ``source`` to ``target`` (RGB 0..255)."""
    a, b = _gray(source), _gray(target)
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        # Small frames: smaller patches, so the coarsest level still sees structure.
        if min(a.shape) < 128:
            dis.setPatchSize(6)
            dis.setPatchStride(3)
        flow = dis.calc(a, b, None)
    elif method == "farneback":
        flow = cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=4, winsize=15,
                                            iterations=5, poly_n=5, poly_sigma=1.1, flags=0)
    else:
        raise ValueError(f"unknown flow method {method!r}; use one of {FLOW_METHODS}")
    return flow.astype(np.float32)


def _sample_grid(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    height, width = flow.shape[:2]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    return x + flow[..., 0], y + flow[..., 1]


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image`` sampled at p + flow(p) (bilinear; edge pixels repeat outside)."""
    map_x, map_y = _sample_grid(flow)
    return cv2.remap(image.astype(np.float32), map_x, map_y, interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def consistency_mask(forward: np.ndarray, backward: np.ndarray) -> np.ndarray:
    """1 where frame t's pixel is seen in frame t-1 along the flow, 0 where it is not.

    ``forward`` is the flow t-1 -> t and ``backward`` t -> t-1. Disoccluded pixels
    (the round trip does not return), motion boundaries and pixels that come from
    outside frame t-1 get 0.
    """
    height, width = backward.shape[:2]
    forward_there = warp(forward, backward)  # the forward flow where each pixel came from
    round_trip = np.sum((forward_there + backward) ** 2, axis=2)
    magnitudes = np.sum(forward_there**2, axis=2) + np.sum(backward**2, axis=2)
    disoccluded = round_trip > 0.01 * magnitudes + 0.5
    grad_u = np.gradient(backward[..., 0])
    grad_v = np.gradient(backward[..., 1])
    gradient = sum(g**2 for g in (*grad_u, *grad_v))
    boundary = gradient > 0.01 * np.sum(backward**2, axis=2) + 0.002
    map_x, map_y = _sample_grid(backward)
    outside = (map_x < 0) | (map_x > width - 1) | (map_y < 0) | (map_y > height - 1)
    return (~(disoccluded | boundary | outside)).astype(np.float32)


def temporal_error(current: np.ndarray, previous_warped: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute difference (0..255) over trusted pixels: how much the video flickers."""
    trusted = mask > 0.5
    if not trusted.any():
        return float("nan")
    return float(np.mean(np.abs(current - previous_warped)[trusted]))
