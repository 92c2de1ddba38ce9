"""The recoloured start (``init.recolor``): the start image with the paintings' colours."""

import numpy as np
from conftest import gradient_image, write_image

from style_exp.app import preflight
from style_exp.app.job import prepare
from style_exp.app.parse import parse
from style_exp.engine.init import initial_image


def _moments(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pixels = image.reshape(-1, 3).astype(np.float64)
    return pixels.mean(axis=0), np.cov(pixels.T)


def _painting(height: int, width: int, seed: int, offset: float) -> np.ndarray:
    """Other colours than the photo's and a flatter spread, inside 0..255 once matched."""
    return 0.4 * gradient_image(height, width, seed=seed)[..., ::-1] + offset


def test_recolored_photo_start_has_the_paintings_colour_mean_and_covariance(compose_config):
    """README: ``init.recolor=true`` recolours the photo to the painting's RGB mean and
    covariance (an affine map: the photo's structure stays); off, the start is the photo."""
    content, style = gradient_image(48, 64), _painting(64, 64, seed=1, offset=90.0)
    rng = np.random.default_rng(0)
    start = initial_image(parse(compose_config(["init=content", "init.recolor=true"])).init,
                          content, [style], rng)
    mean, cov = _moments(start)
    style_mean, style_cov = _moments(style)
    np.testing.assert_allclose(mean, style_mean, atol=1.0)
    np.testing.assert_allclose(cov, style_cov, rtol=0.05, atol=10.0)
    photo = np.column_stack([content.reshape(-1, 3), np.ones(content.size // 3)])
    fit = np.linalg.lstsq(photo, start.reshape(-1, 3), rcond=None)[0]
    assert np.abs(photo @ fit - start.reshape(-1, 3)).max() < 1.0  # the photo, recoloured
    plain = initial_image(parse(compose_config(["init=content"])).init, content, [style], rng)
    np.testing.assert_array_equal(plain, content)


def test_recolored_start_mixes_several_paintings_by_their_blend_weights(compose_config):
    """Two paintings of different sizes at blend 0.75 / 0.25: the start's mean is the
    blend of theirs, whatever their pixel counts (the covariance is the mixture's)."""
    content = gradient_image(48, 64)
    first, second = _painting(64, 64, seed=1, offset=60.0), _painting(32, 24, seed=2, offset=120.0)
    start = initial_image(parse(compose_config(["init=content", "init.recolor=true"])).init,
                          content, [first, second], np.random.default_rng(0), [0.75, 0.25])
    (mean_1, cov_1), (mean_2, cov_2) = _moments(first), _moments(second)
    mean = 0.75 * mean_1 + 0.25 * mean_2
    spread = (0.75 * (cov_1 + np.outer(mean_1, mean_1)) + 0.25 * (cov_2 + np.outer(mean_2, mean_2))
              - np.outer(mean, mean))
    got_mean, got_cov = _moments(start)
    np.testing.assert_allclose(got_mean, mean, atol=1.0)
    np.testing.assert_allclose(got_cov, spread, rtol=0.05, atol=10.0)


def test_a_runs_recolored_start_follows_its_style_weights(parse_config, tmp_path):
    """Through ``job.prepare``, where a run gets its start: ``style_weights=[3,1]`` mix the
    two paintings' colours 0.75 / 0.25."""
    content = write_image(tmp_path / "c.png", gradient_image(48, 64))
    first = write_image(tmp_path / "a.png", _painting(64, 64, seed=1, offset=60.0))
    second = write_image(tmp_path / "b.png", _painting(64, 48, seed=2, offset=120.0))
    job = prepare(preflight.check(parse_config([
        f"content={content}", f"style=[{first},{second}]", "style_weights=[3,1]", "size=64",
        "init=content", "init.recolor=true"])))
    means = [_moments(style)[0] for style in job.problem.styles]
    np.testing.assert_allclose(_moments(job.init)[0], 0.75 * means[0] + 0.25 * means[1],
                               atol=1.0)
