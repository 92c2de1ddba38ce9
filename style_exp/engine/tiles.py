"""The whole image's loss and gradient, computed tile by tile in bounded memory.

The style term is global: every statistic (``losses.py``) is a function of each layer's
moments s = sum_p m_p F_p and S = sum_p m_p F_p F_p^T over every position p of the
image (m_p: a region's mask, or 1). A tiled evaluation therefore makes two passes:

1. forward only, tile by tile: the sums over the positions each tile owns add up to
   the whole image's moments, hence the style loss and its slopes D_s = dL/ds and
   D_S = dL/dS (the position counts n do not depend on the image);
2. forward and backward, tile by tile: with the slopes fixed, the style loss's gradient
   with respect to the features at one position is m_p (D_s + (D_S + D_S^T) F_p), which
   needs only that position's features. So each tile differentiates the surrogate
   sum_p m_p (D_s . F_p + F_p^T D_S F_p) over its own positions, whose gradient is the
   true one, plus its share of the content term; the tiles' input gradients are summed.

Each tile owns a rectangle of positions aligned to 16 px, so it maps onto the grid of
every layer (VGG-19 halves the resolution four times); the network sees it with a halo
around it. Features at the tile's positions equal the untiled ones when the halo covers
their receptive field, and then so does the summed gradient: nothing is blended, every
position's loss is counted once. TV (and a video's temporal term) act on pixels and are
evaluated on the whole image, which is cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from style_exp.engine.losses import (
    Moments,
    Targets,
    moments,
    style_term,
    temporal_loss,
    total_variation_loss,
)
from style_exp.engine.vgg import VGG19Features
from style_exp.spec.loss import LossWeights
from style_exp.spec.settings import ALIGN, exact_halo, stride


@dataclass(frozen=True)
class Tile:
    """Pixels ``owned`` (y0, y1, x0, x1) and the larger ``crop`` the network sees."""

    owned: tuple[int, int, int, int]
    crop: tuple[int, int, int, int]

    @property
    def box(self) -> tf.Tensor:
        """The owned pixels relative to the crop: a tensor, so one trace serves all tiles
        of a crop shape."""
        y0, y1, x0, x1 = self.owned
        return tf.constant([y0 - self.crop[0], y1 - self.crop[0],
                            x0 - self.crop[2], x1 - self.crop[2]], tf.int32)


def owned(features: dict[str, tf.Tensor], layer: str, box: tf.Tensor) -> tf.Tensor:
    """The activations at ``layer`` of the positions in ``box`` as (positions, channels).

    The crop starts on a multiple of 16 px, so its positions at every layer line up
    with the whole image's, and the box's pixels map onto whole positions.
    """
    s = stride(layer)
    rows, columns = slice(box[0] // s, (box[1] + s - 1) // s), slice(box[2] // s,
                                                                     (box[3] + s - 1) // s)
    part = features[layer][0, rows, columns, :]
    return tf.reshape(tf.cast(part, tf.float32), (-1, part.shape[-1]))


def tile_grid(height: int, width: int, side: int, halo: int) -> list[Tile]:
    """Tiles of about ``side`` px (rounded up to 16) covering the image, with ``halo``."""
    side, halo = ALIGN * math.ceil(side / ALIGN), ALIGN * math.ceil(halo / ALIGN)
    tiles = []
    for y0 in range(0, height, side):
        for x0 in range(0, width, side):
            y1, x1 = min(y0 + side, height), min(x0 + side, width)
            crop = (max(0, y0 - halo), min(height, y1 + halo),
                    max(0, x0 - halo), min(width, x1 + halo))
            tiles.append(Tile((y0, y1, x0, x1), crop))
    return tiles


def _crop(image: tf.Tensor, tile: Tile) -> tf.Tensor:
    y0, y1, x0, x1 = tile.crop
    return image[:, y0:y1, x0:x1, :]


def position_count(height: int, width: int, layer: str) -> int:
    """N: how many positions ``layer`` has for an image of this size."""
    return math.ceil(height / stride(layer)) * math.ceil(width / stride(layer))


class TiledNetwork:
    """The network applied tile by tile to images of one size."""

    def __init__(self, network: VGG19Features, layers: list[str], height: int, width: int,
                 side: int, halo: int | None = None):
        self.network = network
        self.halo = exact_halo(layers) if halo is None else halo
        self.tiles = tile_grid(height, width, side, self.halo)
        self.positions = {layer: position_count(height, width, layer) for layer in layers}
        self._tile_moments = tf.function(self._tile_moments_eager, reduce_retracing=True)

    def moments(self, image: tf.Tensor, layers: list[str],
                regions: list[dict[str, tf.Tensor] | None]) -> list[dict[str, Moments]]:
        """Each layer's moments over the whole image, positions weighted by each region's
        masks (None: all 1), from one pass over the tiles."""
        sums = None
        for tile in self.tiles:
            partial = self._tile_moments(_crop(image, tile), tile.box, tuple(layers),
                                         [self.tile_masks(masks, tile) for masks in regions])
            sums = partial if sums is None else [
                {layer: Moments(*(a + b for a, b in zip(old[layer], new[layer], strict=True)))
                 for layer in old}
                for old, new in zip(sums, partial, strict=True)]
        return sums

    def tile_masks(self, masks: dict[str, tf.Tensor] | None,
                   tile: Tile) -> dict[str, tf.Tensor] | None:
        """The part of each layer's mask (1, h, w, 1) at the positions ``tile`` owns."""
        if masks is None:
            return None
        y0, y1, x0, x1 = tile.owned
        return {layer: mask[:, y0 // s:-(-y1 // s), x0 // s:-(-x1 // s), :]
                for layer, mask in masks.items() for s in [stride(layer)]}

    def _tile_moments_eager(self, crop: tf.Tensor, box: tf.Tensor, layers: tuple[str, ...],
                            regions: list[dict[str, tf.Tensor] | None]
                            ) -> list[dict[str, Moments]]:
        features = self.network(crop)
        return [{layer: moments(owned(features, layer, box),
                                None if masks is None else masks[layer])
                 for layer in layers}
                for masks in regions]


def tiled_moments(network: VGG19Features, image: np.ndarray, side: int,
                  layers: list[str]) -> dict[str, Moments]:
    """The moments of an image too large to pass through the network whole."""
    height, width = image.shape[:2]
    tiled = TiledNetwork(network, layers, height, width, side)
    return tiled.moments(tf.constant(image[None], tf.float32), layers, [None])[0]


class TiledLoss(TiledNetwork):
    """Loss terms and gradient of ``losses.loss_terms`` at images the size of ``content``."""

    def __init__(self, network: VGG19Features, loss: LossWeights, content: np.ndarray,
                 side: int, halo: int | None = None):
        height, width = content.shape[:2]
        super().__init__(network, [*loss.content_layers, *loss.style_layers], height, width,
                         side, halo)
        self.loss = loss
        self._tile_gradient = tf.function(self._tile_gradient_eager, reduce_retracing=True)
        # One XLA program: fused, the whole-image TV term and its gradient need no
        # image-sized temporaries besides the gradient itself.
        self._pixel_terms = tf.function(self._pixel_terms_eager, jit_compile=True,
                                        autograph=False)
        image = tf.constant(content[None], tf.float32)
        # Per tile, the content's features at the tile's own positions, in the network's
        # dtype (a float32 copy would hold the same values in twice the bytes).
        self.content_targets = [
            {layer: tf.cast(owned(features, layer, tile.box), network.compute_dtype)
             for layer in loss.content_layers}
            for tile in self.tiles for features in [network(_crop(image, tile))]]

    def __call__(self, image: tf.Tensor,
                 targets: Targets) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        """The loss terms at ``image`` (whole-image values) and the gradient of their total.

        ``targets`` gives the style statistics (and regions' masks) and the temporal
        target; the content targets are the tiles' own.
        """
        regions = [target.masks for target in targets.style]
        sums = self.moments(image, list(self.loss.style_layers), regions)
        sums_of = [{layer: (m.total, m.outer) for layer, m in region.items()} for region in sums]
        with tf.GradientTape() as tape:
            tape.watch(sums_of)
            style = style_term([{layer: Moments(sums[r][layer].count, *parts)
                                 for layer, parts in region.items()}
                                for r, region in enumerate(sums_of)], targets, self.loss)
        # (D_s, D_S) per region and layer; a statistic may not read s (the Gram).
        slopes = tape.gradient(style, sums_of,
                               unconnected_gradients=tf.UnconnectedGradients.ZERO)
        content = tf.constant(0.0)
        terms, gradient = self._pixel_terms(image, targets.temporal)
        summed = tf.Variable(gradient)  # tiles add into their crop: no image-sized copy each
        for tile, tile_content in zip(self.tiles, self.content_targets, strict=True):
            value, tile_gradient = self._tile_gradient(
                _crop(image, tile), tile.box, slopes,
                [self.tile_masks(masks, tile) for masks in regions], tile_content)
            content += value
            y0, y1, x0, x1 = tile.crop
            summed[:, y0:y1, x0:x1, :].assign(summed[:, y0:y1, x0:x1, :] + tile_gradient)
        terms = {"content": content, "style": style, **terms}
        terms["total"] = tf.add_n(list(terms.values()))
        return terms, tf.convert_to_tensor(summed)

    def _tile_gradient_eager(self, crop: tf.Tensor, box: tf.Tensor,
                             slopes: list[dict[str, tuple[tf.Tensor, tf.Tensor]]],
                             masks: list[dict[str, tf.Tensor] | None],
                             content_targets: dict[str, tf.Tensor]
                             ) -> tuple[tf.Tensor, tf.Tensor]:
        """This tile's content loss, and the gradient of it plus the style surrogate."""
        with tf.GradientTape() as tape:
            tape.watch(crop)
            features = self.network(crop)
            content = self.loss.content * tf.add_n([
                a * self._mean_share(tf.square(owned(features, layer, box)
                                               - tf.cast(content_targets[layer], tf.float32)),
                                     layer)
                for layer, a in self.loss.content_layers.items()])
            # Its gradient at each position is the style loss's: m_p (D_s + (D_S + D_S^T) F_p).
            surrogate = tf.add_n([tf.constant(0.0)] + [
                tf.reduce_sum(weight * (tf.linalg.matvec(f, d_sum)
                                        + tf.reduce_sum(tf.matmul(f, d_outer) * f, -1)))
                for region, region_masks in zip(slopes, masks, strict=True)
                for layer, (d_sum, d_outer) in region.items()
                for f in [owned(features, layer, box)]
                for weight in [1.0 if region_masks is None
                               else tf.reshape(region_masks[layer], (-1,))]])
            scaled = (content + surrogate) * self.network.gradient_scale
        return content, tape.gradient(scaled, crop) / self.network.gradient_scale

    def _mean_share(self, values: tf.Tensor, layer: str) -> tf.Tensor:
        """This tile's part of a mean over all N positions and C channels of ``layer``."""
        return tf.reduce_sum(values) / (self.positions[layer] * values.shape[-1])

    def _pixel_terms_eager(self, image: tf.Tensor, temporal: tuple[tf.Tensor, tf.Tensor] | None
                           ) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
        """TV (and the temporal term, given its target and mask) on the whole image, with
        their gradient."""
        with tf.GradientTape() as tape:
            tape.watch(image)
            terms = {"tv": self.loss.tv * total_variation_loss(image)}
            if temporal is not None:
                terms["temporal"] = self.loss.temporal * temporal_loss(image, *temporal)
            total = tf.add_n(list(terms.values()))
        return terms, tape.gradient(total, image)
