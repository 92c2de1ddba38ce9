"""Spatial control (Gatys et al. 2017): a label image's colours as regions, each with its
own styles, and the regions' masks on every layer's grid.

A label image has one colour per region. Each pixel belongs to the region whose
colour is nearest, within ``COLOR_TOLERANCE`` (anti-aliased or JPEG-compressed labels
still work); a pixel near none of the listed colours belongs to no region and, like a
region of weight 0, keeps the photo. ``feather`` (px) blurs the regions' edges; each
layer's mask then averages the pixels under each of its positions, exactly as VGG-19's
2x2 "SAME" poolings group them, so edges are soft on the coarse layers anyway.

A clip takes one label image, or a folder of them (``masks.content=DIR``): one per
source frame, sorted and picked (``video.stride``, ``video.max_frames``) as the frames
folder is, so label i belongs to frame i. A region may be absent from some frames (an
all-zero mask there: the loss drops its term), not from all.

No TensorFlow here: the preflight reads labels before TensorFlow loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from style_exp.engine.images import image_size, load_image
from style_exp.engine.videoio import Clip, frame_files
from style_exp.spec.errors import UserError
from style_exp.spec.masks import MaskSpec
from style_exp.spec.settings import stride

# Largest per-channel difference (0..255) at which a pixel still has a region's colour.
COLOR_TOLERANCE = 48
# A region covering fewer pixels than this fraction of the label image is "not present"
# (its mask is all zero: a sliver of a few stray pixels would be stylised on its own).
MIN_AREA = 1e-3


@dataclass(frozen=True)
class Region:
    """One region: its mask at any size (the content's is resized to it), the indices of
    its styles in the problem's list, their blend weights and the region's weight."""

    mask: np.ndarray  # (H, W) float in [0, 1]
    styles: tuple[int, ...]
    blend: tuple[float, ...]
    weight: float


def label_masks(labels: np.ndarray, colors: Sequence[Sequence[int]],
                feather: float = 0.0) -> list[np.ndarray]:
    """One (H, W) mask in [0, 1] per colour of an (H, W, 3) label image (0..255)."""
    palette = np.asarray(colors, np.float32)  # (R, 3)
    difference = np.abs(labels[:, :, None, :3].astype(np.float32) - palette).max(axis=-1)
    nearest = difference.argmin(axis=-1)
    inside = difference.min(axis=-1) <= COLOR_TOLERANCE
    masks = [((nearest == index) & inside).astype(np.float32) for index in range(len(palette))]
    masks = [mask if mask.mean() >= MIN_AREA else np.zeros_like(mask) for mask in masks]
    if feather > 0:
        masks = [cv2.GaussianBlur(mask, (0, 0), feather) for mask in masks]
    return masks


def missing_colors(labels: np.ndarray, colors: Sequence[Sequence[int]]) -> list[int]:
    """The indices of the colours that cover (almost) none of the label image."""
    return [index for index, mask in enumerate(label_masks(labels, colors))
            if mask.mean() < MIN_AREA]


def frame_labels(masks: MaskSpec, clip: Clip | None) -> tuple[Path, ...]:
    """The label image of each of the clip's frames when ``masks.content`` is a folder; ()
    when it is one image (for a photo, or a whole clip)."""
    folder = Path(masks.content)
    if not folder.is_dir():
        return ()
    if clip is None:
        raise UserError(f"a folder of label images ({folder}) is for a clip, and content is a "
                        "photo", "masks.content", "give one label image for a photo")
    files = frame_files(folder, "masks.content")
    if len(files) != clip.available:
        raise UserError(f"{len(files)} label images in {folder}, but the clip {clip.source} "
                        f"has {clip.available} frames", "masks.content",
                        "one label image per frame, before video.stride and video.max_frames")
    return tuple(clip.chosen(files))


def check_labels(masks: MaskSpec, clip: Clip | None = None) -> tuple[Path, ...]:
    """The label image (or each of the clip's per-frame ones) reads, and every region's
    colour is in it (in at least one of them), before TensorFlow loads; the per-frame
    label images (``frame_labels``), for the run to use as checked."""
    files = frame_labels(masks, clip)
    for path in files:
        image_size(path)  # a broken label image fails here, not at its frame
    colors = [region.color for region in masks.regions]
    missing = set(range(len(colors)))
    for path in files or (Path(masks.content),):
        missing &= set(missing_colors(load_image(path), colors))
        if not missing:
            return files
    where = (f"any of the {len(files)} label images in {masks.content}" if files
             else f"the label image {masks.content}")
    index = min(missing)
    raise UserError(f"colour {list(colors[index])} is not in {where}",
                    f"masks.regions[{index}].color", "use the RGB of one of its regions")


def load_regions(masks: MaskSpec, labels: str | Path | None = None) -> tuple[Region, ...]:
    """The regions of a checked :class:`MaskSpec`, their masks at the label image's size,
    from ``masks.content`` or, for a frame, its own label image ``labels``."""
    found = label_masks(load_image(labels or masks.content),
                        [region.color for region in masks.regions], masks.feather)
    return tuple(Region(mask, region.styles, region.blend, region.weight)
                 for mask, region in zip(found, masks.regions, strict=True))


def layer_masks(mask: np.ndarray, size: tuple[int, int],
                layers: Sequence[str]) -> dict[str, np.ndarray]:
    """The mask resized to ``size`` (H, W) and averaged onto each layer's positions."""
    height, width = size
    if mask.shape != (height, width):
        mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_AREA)
    by_stride = {1: mask.astype(np.float32)}
    for _ in range(max(stride(layer) for layer in layers).bit_length() - 1):
        by_stride[2 * max(by_stride)] = _halved(by_stride[max(by_stride)])
    return {layer: by_stride[stride(layer)] for layer in layers}


def _halved(mask: np.ndarray) -> np.ndarray:
    """2x2 average pooling with "SAME" padding: a partial window averages its pixels."""
    height, width = mask.shape
    padded = np.full((height + height % 2, width + width % 2), np.nan, np.float32)
    padded[:height, :width] = mask
    windows = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2)
    return np.nanmean(windows, axis=(1, 3)).astype(np.float32)
