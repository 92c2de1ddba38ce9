"""Inputs of every common kind load as upright RGB; bad files fail naming the file."""

import numpy as np
import pytest
from PIL import ExifTags, Image

from style_exp.engine.images import ImageError, image_size, load_image, resize_longest, save_image

# Lossy formats may move a pixel this far on average from what was saved; a wrong channel
# order, a mirrored or blank image is tens of levels off.
LOSSY_MEAN_ERROR = 3.0
RED, GREEN, BLUE, YELLOW = (230, 20, 20), (20, 200, 20), (20, 20, 230), (240, 230, 20)


def _rgb(h: int = 40, w: int = 60) -> np.ndarray:
    """Red ramps left to right, green top to bottom, blue is flat: every axis tells apart."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 4, y * 6, np.full_like(x, 100)], axis=2).astype(np.uint8)


def _quadrants(h: int = 40, w: int = 60) -> np.ndarray:
    """Four coloured quadrants (red, green / blue, yellow): each flip and turn moves them
    differently, and flat blocks survive JPEG."""
    image = np.empty((h, w, 3), np.uint8)
    image[:h // 2, :w // 2], image[:h // 2, w // 2:] = RED, GREEN
    image[h // 2:, :w // 2], image[h // 2:, w // 2:] = BLUE, YELLOW
    return image


def _assert_close(image: np.ndarray, expected: np.ndarray, lossy: bool) -> None:
    assert image.shape == expected.shape and image.dtype == np.float32
    error = np.abs(image - expected.astype(np.float32))
    assert error.mean() <= (LOSSY_MEAN_ERROR if lossy else 0), error.mean()


@pytest.mark.parametrize("suffix, lossy", [(".jpg", True), (".png", False), (".webp", True)])
def test_common_formats_load_their_pixels_in_rgb_order(tmp_path, suffix, lossy):
    path = tmp_path / f"img{suffix}"
    Image.fromarray(_rgb()).save(path)
    _assert_close(load_image(path), _rgb(), lossy)


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


def test_palette_image_loads_its_colours_not_its_indices(tmp_path):
    palette = np.array([RED, GREEN, BLUE, YELLOW], np.uint8)
    indices = np.arange(40 * 60, dtype=np.uint8).reshape(40, 60) % 4
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.ravel().tolist())
    path = tmp_path / "palette.png"
    image.save(path)
    _assert_close(load_image(path), palette[indices], lossy=False)


def test_sixteen_bit_png_is_scaled(tmp_path):
    data = np.full((6, 6), 65535, np.uint16)
    data[0, 0] = 0
    path = tmp_path / "deep.png"
    Image.fromarray(data).save(path)
    image = load_image(path)
    assert image[0, 0, 0] == 0
    assert image[1, 1, 0] == pytest.approx(255)


# What a viewer shows for each EXIF orientation, written from the EXIF spec's wording
# ("the 0th row is the visual ..., the 0th column is the visual ...") in numpy, not PIL.
SHOWN = {
    1: lambda a: a,
    2: np.fliplr,  # row 0 top, column 0 right
    3: lambda a: np.rot90(a, 2),  # row 0 bottom, column 0 right
    4: np.flipud,  # row 0 bottom, column 0 left
    5: lambda a: a.transpose(1, 0, 2),  # row 0 left, column 0 top
    6: lambda a: np.rot90(a, -1),  # row 0 right, column 0 top: turn clockwise
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # row 0 right, column 0 bottom
    8: lambda a: np.rot90(a, 1),  # row 0 left, column 0 bottom: turn anticlockwise
}


@pytest.mark.parametrize("orientation", sorted(SHOWN))
def test_exif_orientation_loads_as_the_viewer_sees_it(tmp_path, orientation):
    """Each corner lands where a viewer shows it; a turn the wrong way, a transpose or a
    mirror puts another colour there, though some give the same shape."""
    path = tmp_path / "oriented.jpg"
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = orientation
    Image.fromarray(_quadrants()).save(path, exif=exif, quality=95, subsampling=0)
    shown = SHOWN[orientation](_quadrants())
    _assert_close(load_image(path), shown, lossy=True)
    assert image_size(path) == (shown.shape[1], shown.shape[0])


def test_large_image_is_downscaled_to_longest_side(tmp_path):
    """The reduced-scale JPEG decode and the resize keep colours and where they are."""
    path = tmp_path / "large.jpg"
    large = np.empty((3000, 4000, 3), np.uint8)
    large[:, :2000], large[:, 2000:] = RED, BLUE
    Image.fromarray(large).save(path)
    image = load_image(path, longest_side=128)
    assert image.shape == (96, 128, 3)
    # Away from the seam, where resampling may blend the halves.
    _assert_close(image[:, :60], np.broadcast_to(RED, (96, 60, 3)), lossy=True)
    _assert_close(image[:, 68:], np.broadcast_to(BLUE, (96, 60, 3)), lossy=True)


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
