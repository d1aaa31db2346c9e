"""Images are read as 8-bit RGB without losing what wider formats hold."""
import numpy as np
from PIL import Image

from llava.mm_utils import load_image_rgb


def test_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    values = (np.arange(256, dtype=np.uint32) * 257).astype(np.uint16).reshape(16, 16)  # 0 .. 65535
    path = tmp_path / "gradient16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(load_image_rgb(str(path)))
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], np.arange(256, dtype=np.uint8).reshape(16, 16))  # v * 257 -> v
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    assert (np.asarray(Image.open(path).convert("RGB"))[..., 0] == 255).mean() > 0.9  # what plain convert did


def test_8_bit_images_are_unchanged(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(pixels).save(path)
    assert np.array_equal(np.asarray(load_image_rgb(str(path))), pixels)
    Image.fromarray(pixels[..., 0]).save(tmp_path / "gray.png")
    assert np.array_equal(np.asarray(load_image_rgb(str(tmp_path / "gray.png")))[..., 1], pixels[..., 0])
