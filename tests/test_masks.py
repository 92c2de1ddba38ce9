"""Spatial control: label images as regions, per-region statistics, tiles, bad input."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf
from conftest import gradient_image, run_cli, stripes_image, write_image

from style_exp.engine.losses import moments, style_statistic
from style_exp.engine.masks import Region, label_masks, layer_masks
from style_exp.engine.objective import Problem, build_network, compute_targets, loss_and_gradient
from style_exp.engine.stylize import stylize
from style_exp.engine.tiles import TiledLoss
from style_exp.spec.loss import STYLE_STATISTICS, LossSettings
from style_exp.spec.settings import AdamSettings, ConfigError, LBFGSSettings, LoopSettings

LOSS = LossSettings(content_layers=("relu2_2",), style_layers=("relu1_1", "relu2_1", "relu3_1"))
HEIGHT, WIDTH = 64, 96


def halves() -> np.ndarray:
    """A label image: red left half, blue right half, a green stripe belonging to no region."""
    labels = np.zeros((HEIGHT, WIDTH, 3), np.float32)
    labels[:, : WIDTH // 2] = (255, 0, 0)
    labels[:, WIDTH // 2:] = (0, 0, 255)
    labels[:4] = (0, 255, 0)
    return labels


def spots(height: int, width: int) -> np.ndarray:
    """A second, very different 'painting': soft green blobs on dark purple."""
    y, x = np.mgrid[0:height, 0:width]
    blobs = 0.5 + 0.5 * np.sin(x / 3.0) * np.cos(y / 3.0)
    return np.stack([60 + 20 * blobs, 40 + 200 * blobs, 90 + 10 * blobs], -1).astype(np.float32)


def test_labels_become_one_mask_per_colour():
    labels = halves()
    labels[10, 10] = (230, 20, 30)  # near red (anti-aliasing, JPEG): still red
    red, blue = label_masks(labels, [(255, 0, 0), (0, 0, 255)])
    assert red[10, 10] == 1 and red[20, : WIDTH // 2].all() and not red[20, WIDTH // 2:].any()
    assert not (red[:4].any() or blue[:4].any())  # green: no region, the photo stays
    soft = label_masks(labels, [(255, 0, 0)], feather=3.0)[0]
    assert 0.2 < soft[20, WIDTH // 2] < 0.8  # a feathered edge


@pytest.mark.parametrize("height, width", [(64, 96), (37, 53)])
def test_masks_fall_on_every_layers_grid(weights, height, width):
    """Averaged like VGG's 'SAME' poolings: one value per position, at any image size (the
    scales of a coarse-to-fine run), and a half-covered position gets half."""
    network = build_network(weights, LOSS.weights(), "max")
    features = network(tf.zeros((1, height, width, 3)))
    mask = np.zeros((height, width), np.float32)
    mask[:, : width // 2] = 1
    for layer, on_grid in layer_masks(mask, (height, width), list(LOSS.style_layers)).items():
        assert on_grid.shape == tuple(features[layer].shape[1:3])
    edge = np.zeros((HEIGHT, WIDTH), np.float32)
    edge[:, :50] = 1  # relu3_1's position 12 spans pixels 48..51
    assert layer_masks(edge, (HEIGHT, WIDTH), ["relu3_1"])["relu3_1"][5, 12] == 0.5


@pytest.fixture(scope="module")
def network(weights):
    return build_network(weights, LOSS.weights(), "max")


def two_region_problem(statistic: str, weights: tuple[float, float] = (1.0, 1.0)) -> Problem:
    red, blue = label_masks(halves(), [(255, 0, 0), (0, 0, 255)])
    return Problem(gradient_image(HEIGHT, WIDTH), [stripes_image(64, 64), spots(64, 64)],
                   [0.5, 0.5], LOSS.weights(statistic=STYLE_STATISTICS[statistic]()),
                   regions=(Region(red, (0,), (1.0,), weights[0]),
                            Region(blue, (1,), (1.0,), weights[1])))


@pytest.mark.parametrize("statistic", sorted(STYLE_STATISTICS))
def test_each_region_ends_closer_to_its_own_style(network, statistic):
    """Two regions, two styles: after a short run each region's statistic (masked) is
    nearer its own painting's than the other's, at every style layer."""
    problem = two_region_problem(statistic)
    loop = LoopSettings(optimizer=AdamSettings(lr=5.0), log_every=50)
    image = tf.constant(stylize(problem, network, problem.content, loop, 60).image[None])
    measure = style_statistic(problem.loss.statistic)
    features = network(image)
    painted = [network(tf.constant(style[None])) for style in problem.styles]
    for region in problem.regions:
        own, other = region.styles[0], 1 - region.styles[0]
        for layer, mask in layer_masks(region.mask, (HEIGHT, WIDTH),
                                       list(LOSS.style_layers)).items():
            ours = measure.of_image(moments(features[layer], tf.constant(mask[None, ..., None])))
            distances = [float(measure.distance(ours, measure.of_target(moments(p[layer]))))
                         for p in painted]
            assert distances[own] < distances[other], (layer, region.styles, distances)


def test_a_region_of_weight_zero_keeps_the_photo(network):
    """Started from the photo, the unstyled half moves little: only where the styled half's
    features reach it (relu3_1 sees 20 px around). L-BFGS, whose steps follow the
    gradient's size, unlike Adam's first steps that move every pixel by about lr."""
    problem = two_region_problem("gram", weights=(1.0, 0.0))
    loop = LoopSettings(optimizer=LBFGSSettings(), log_every=20)
    result = stylize(problem, network, problem.content, loop, 20).image
    change = np.abs(result - problem.content).mean(axis=-1)
    styled, kept = change[8:, : WIDTH // 2].mean(), change[8:, WIDTH // 2 + 20:].mean()
    assert kept < 0.25 * styled, (styled, kept)  # measured: 0.10 (the preconditioner spreads)


@pytest.mark.parametrize("statistic", sorted(STYLE_STATISTICS))
def test_tiled_masked_loss_equals_the_untiled(network, statistic):
    """Each tile sees its part of every region's mask: terms and gradient as untiled."""
    problem = two_region_problem(statistic)
    image = tf.constant(gradient_image(HEIGHT, WIDTH, seed=3)[None])
    terms, gradient = loss_and_gradient(network, image, compute_targets(network, problem),
                                        problem.loss)
    tiled = TiledLoss(network, problem.loss, problem.content, side=32)
    tiled_terms, tiled_gradient = tiled(image, compute_targets(network, problem, 32))
    # float32 moments: a masked covariance's cancellation costs a digit (measured: 2.7e-5
    # for wasserstein, whose loss and gradient are otherwise exact as the Gram's).
    assert float(tf.norm(tiled_gradient - gradient) / tf.norm(gradient)) < 1e-4
    assert float(tiled_terms["style"]) == pytest.approx(float(terms["style"]), rel=1e-5)


def test_masks_are_checked_before_tensorflow_loads(parse_config, tmp_path):
    labels = write_image(tmp_path / "labels.png", halves())
    painting = write_image(tmp_path / "a.png", stripes_image(32, 32))
    photo = write_image(tmp_path / "photo.png", gradient_image(HEIGHT, WIDTH))
    base = [f"content={photo}", f"style={painting}", f"masks.content={labels}"]
    with pytest.raises(ConfigError, match=r"masks.regions\[0\]"):
        parse_config([*base, "masks.regions=[{colour:[255,0,0]}]"])
    with pytest.raises(ConfigError, match=r"masks.regions\[1\].color"):
        parse_config([*base, "masks.regions=[{color:[255,0,0]},{color:[0,0]}]"])
    with pytest.raises(ConfigError, match="masks.regions"):
        parse_config(base)
    spec = parse_config([*base, f"masks.regions=[{{color:[255,0,0]}},"
                                f"{{color:[0,0,255],style:{photo},weight:0}}]"])
    assert spec.inputs.styles == (str(painting), str(photo))
    assert [r.styles for r in spec.inputs.masks.regions] == [(0,), (1,)]
    assert spec.files()["masks"] == str(labels)
    done = run_cli([*base, "masks.regions=[{color:[0,255,255]},{color:[0,0,255]}]",
                    "progress=false", f"tracking.uri=sqlite:///{tmp_path / 'm.db'}"], tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-2000:]
    assert "colour [0, 255, 255] is not in the label image" in errors[0]
    assert "masks.regions[0].color" in errors[0]


def test_one_mask_serves_every_frame_size(network):
    """A clip's frames and a coarse-to-fine run's scales reuse the label image: the targets
    of a smaller problem get the masks resized to it."""
    problem = two_region_problem("gram")
    small = dataclasses.replace(problem, content=problem.content[::2, ::2])
    targets = compute_targets(network, small)
    assert targets.style[0].masks["relu1_1"].shape[1:3] == (HEIGHT // 2, WIDTH // 2)
