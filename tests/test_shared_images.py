"""Real photographs and paintings (``$STYLE_EXP_IMAGES``, default ``../shared/images``):
what synthetic test pictures cannot show. Skipped, saying why, where they are absent."""

import struct
from pathlib import Path

import numpy as np
from conftest import require_shared_images
from PIL import ExifTags

from style_exp.app.parse import parse
from style_exp.engine.images import image_size, load_image
from style_exp.engine.init import initial_image
from style_exp.engine.objective import Problem, build_network
from style_exp.engine.quality import CONTENT_DISTANCE, STYLE_DISTANCE, QualityMeter
from style_exp.engine.stylize import stylize
from style_exp.spec.runspec import style_side

PHOTO, PAINTING = "stata.jpg", "dora_maar.jpg"  # the seed paper's Figure 3 pair
SIZE = 64


def _with_orientation(photo: Path, orientation: int, target: Path) -> Path:
    """The camera's own file with only its EXIF orientation changed, byte for byte: the
    pixels are not re-encoded, so the upright load is known exactly."""
    data = photo.read_bytes()
    order = {b"MM": ">", b"II": "<"}[data[data.index(b"Exif\0\0") + 6:][:2]]

    def entry(value: int) -> bytes:  # tag, type SHORT, count 1, value, padding
        return struct.pack(f"{order}HHIHH", ExifTags.Base.Orientation, 3, 1, value, 0)

    assert data.count(entry(1)) == 1, "the photo should say it is upright, once"
    target.write_bytes(data.replace(entry(1), entry(orientation)))
    return target


def test_a_real_photo_turned_by_its_exif_tag_loads_upright(tmp_path):
    """A real camera JPEG's EXIF block (big-endian, among many other tags), at full size
    and through the reduced-scale decode, turned the way a viewer turns it."""
    photo = require_shared_images() / PHOTO
    turned = _with_orientation(photo, 6, tmp_path / "turned.jpg")  # show turned clockwise
    np.testing.assert_array_equal(load_image(turned), np.rot90(load_image(photo), -1))
    np.testing.assert_allclose(load_image(turned, SIZE), np.rot90(load_image(photo, SIZE), -1),
                               atol=1e-3)
    width, height = image_size(photo)
    assert image_size(turned) == (height, width)


def test_the_default_settings_stylise_a_real_pair(weights, compose_config):
    """The CLI's defaults (loss, optimiser, start) on the seed paper's photo and painting:
    in a few iterations the photo takes on the painting's style, measured independently of
    the loss, and stays nearer the photo's content than the painting is."""
    images = require_shared_images()
    spec = parse(compose_config())
    photo = load_image(images / PHOTO, SIZE)
    painting = load_image(images / PAINTING, style_side(SIZE, spec.style_scale))
    loss = spec.loss
    init = initial_image(spec.init, photo, [painting], np.random.default_rng(spec.seed))
    result = stylize(Problem(photo, [painting], [1.0], loss),
                     build_network(weights, loss, spec.model.pooling), init,
                     spec.loop, 10)
    assert result.metrics["loss/total"] < 0.5 * result.history[0][1]["loss/total"]
    meter = QualityMeter(weights, photo, [painting], [1.0])
    before, after, model = meter(photo), meter(result.image), meter(painting)
    assert after[STYLE_DISTANCE] < 0.6 * before[STYLE_DISTANCE]
    assert after[CONTENT_DISTANCE] < model[CONTENT_DISTANCE]
