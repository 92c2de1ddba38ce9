"""Inputs of every common kind load as upright RGB; bad files fail naming the file."""

import numpy as np
import pytest
from PIL import Image

from style_exp.images import ImageError, load_image, resize_longest, save_image


def _rgb(h=40, w=60):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4, y * 6, np.full_like(x, 100)], axis=2).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".webp"])
def test_common_formats(tmp_path, suffix):
    path = tmp_path / f"img{suffix}"
    Image.fromarray(_rgb()).save(path)
    image = load_image(path)
    assert image.shape == (40, 60, 3) and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 255


def test_grayscale_becomes_three_equal_channels(tmp_path):
    path = tmp_path / "gray.png"
    Image.fromarray(np.full((10, 12), 77, np.uint8), mode="L").save(path)
    image = load_image(path)
    assert image.shape == (10, 12, 3)
    assert np.all(image == 77)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent on the left half
    rgba[:, 4:, 3] = 255
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    image = load_image(path)
    np.testing.assert_array_equal(image[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(image[0, 7], [255, 0, 0])


def test_palette_image(tmp_path):
    path = tmp_path / "palette.png"
    Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(path)
    assert load_image(path).shape == (40, 60, 3)


def test_sixteen_bit_png_is_scaled(tmp_path):
    data = np.full((6, 6), 65535, np.uint16)
    data[0, 0] = 0
    path = tmp_path / "deep.png"
    Image.fromarray(data).save(path)
    image = load_image(path)
    assert image[0, 0, 0] == 0
    assert image[1, 1, 0] == pytest.approx(255)


def test_exif_rotation_is_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    Image.fromarray(_rgb(40, 60)).save(path, exif=exif)
    assert load_image(path).shape == (60, 40, 3)


def test_large_image_is_downscaled_to_longest_side(tmp_path):
    path = tmp_path / "large.jpg"
    Image.fromarray(np.zeros((3000, 4000, 3), np.uint8)).save(path)
    image = load_image(path, longest_side=128)
    assert image.shape == (96, 128, 3)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ImageError, match="not found .*nothing.jpg"):
        load_image(tmp_path / "nothing.jpg")


def test_corrupt_file_names_it(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    with pytest.raises(ImageError, match="broken.png"):
        load_image(path)


def test_truncated_jpeg_names_it(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(_rgb(200, 200)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ImageError, match="cut.jpg"):
        load_image(path)


def test_resize_longest_keeps_aspect():
    assert resize_longest(np.zeros((399, 600, 3), np.float32), 256).shape == (170, 256, 3)


def test_save_is_atomic_and_readable(tmp_path):
    target = tmp_path / "out" / "image.png"
    save_image(np.full((5, 7, 3), 300.0), target)
    assert [p.name for p in target.parent.iterdir()] == ["image.png"]
    assert np.all(np.asarray(Image.open(target)) == 255)
