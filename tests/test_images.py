"""Images are read as 8-bit RGB without losing what wider formats hold."""
import numpy as np
import pytest
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


def write_png16(path, values, color_type):
    """A 16-bit PNG written byte by byte (PIL cannot save 16-bit RGB)."""
    import struct
    import zlib

    height, width = values.shape[:2]
    rows = b"".join(b"\x00" + values[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels,color_type", [(3, 2), (4, 6)])
def test_16_bit_rgb_png_keeps_its_values(tmp_path, channels, color_type):
    """PIL reads 16-bit RGB(A) PNGs as 8-bit RGB(A) itself (no wide RGB mode to scale): values survive, not white."""
    values = (np.arange(16 * channels, dtype=np.uint32).reshape(4, 4, channels) * 1024).astype(np.uint16)
    path = tmp_path / "rgb16.png"
    write_png16(path, values, color_type)
    rgb = np.asarray(load_image_rgb(str(path))).astype(int)
    assert rgb.shape == (4, 4, 3)
    assert np.abs(rgb - values[..., :3].astype(int) * 255 // 65535).max() <= 1
