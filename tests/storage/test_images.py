import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import demo_photos
from core.errors import ImageError
from core.storage import images


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def photo() -> Image.Image:
    return Image.open(demo_photos("Banana")[0]).convert("RGB")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF"])
def test_accepted_formats_decode_to_rgb(fmt):
    data = encode(photo(), fmt)
    info = images.validate(data)
    assert info.format == fmt
    assert (info.width, info.height) == photo().size
    assert images.load_for_model(data, 224).shape == (224, 224, 3)


def test_exif_orientation_is_applied():
    wide = Image.new("RGB", (300, 100), "red")
    wide.paste((0, 0, 255), (0, 0, 150, 100))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    data = encode(wide, "JPEG", exif=exif.tobytes())
    info = images.validate(data)
    assert (info.width, info.height) == (100, 300)
    upright = images.decode(data)
    assert upright.size == (100, 300)
    top = np.asarray(upright)[:100].mean(axis=(0, 1))
    assert top[2] > 200 and top[0] < 60, "the blue half should be on top after rotating"


def test_cmyk_jpeg_becomes_rgb():
    data = encode(photo().convert("CMYK"), "JPEG")
    decoded = images.decode(data)
    assert decoded.mode == "RGB"
    assert np.abs(np.asarray(decoded, float) - np.asarray(photo(), float)).mean() < 25


def test_16_bit_png_is_scaled_to_8_bits():
    gradient = (np.arange(256 * 64, dtype=np.uint16).reshape(64, 256) * 4)
    data = encode(Image.fromarray(gradient), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    decoded = np.asarray(images.decode(data))
    assert decoded.shape == (64, 256, 3)
    assert decoded.min() == 0 and decoded.max() == 255


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (50, 50), (0, 0, 0, 0))
    rgba.paste((255, 0, 0, 255), (0, 0, 25, 50))
    decoded = np.asarray(images.decode(encode(rgba, "PNG")))
    assert tuple(decoded[10, 40]) == (255, 255, 255)
    assert tuple(decoded[10, 5]) == (255, 0, 0)


def test_animated_gif_uses_the_first_frame():
    frames = [Image.new("RGB", (40, 40), color) for color in ("green", "blue", "red")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    decoded = np.asarray(images.decode(buffer.getvalue()))
    assert decoded[..., 1].mean() > 100 and decoded[..., 2].mean() < 50


@pytest.mark.parametrize("data, reason", [
    (b"", "not an image"),
    (b"hello, I am a text file\n" * 10, "not an image"),
    (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "not an image"),
])
def test_non_images_are_rejected_with_a_reason(data, reason):
    with pytest.raises(ImageError, match=reason):
        images.validate(data)


def test_truncated_jpeg_is_rejected():
    data = encode(photo(), "JPEG")
    with pytest.raises(ImageError, match="truncated|corrupt"):
        images.validate(data[: len(data) // 2])


def test_png_with_bad_crc_is_rejected():
    data = bytearray(encode(photo(), "PNG"))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF  # corrupt compressed pixel data; CRC no longer matches
    with pytest.raises(ImageError):
        images.validate(bytes(data))


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG of huge declared size whose pixel data is a few bytes (a bomb)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    compressor = zlib.compressobj(9)
    row = b"\x00" + b"\x00" * width
    body = b"".join(compressor.compress(row) for _ in range(16)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_decompression_bomb_is_rejected_before_decoding():
    with pytest.raises(ImageError, match="megapixels"):
        images.validate(_png_header_only(20000, 20000))


def test_pixel_limit_is_configurable(monkeypatch):
    data = encode(photo(), "PNG")
    monkeypatch.setenv("PRODUCTLENS_MAX_MEGAPIXELS", "0")
    with pytest.raises(ImageError, match="limit"):
        images.validate(data)


def test_one_pixel_image_is_accepted():
    data = encode(Image.new("RGB", (1, 1), "white"), "PNG")
    assert images.load_for_model(data, 224).shape == (224, 224, 3)


def test_center_crop_and_full_resize_differ_on_wide_images():
    wide = Image.new("RGB", (300, 100), "white")
    wide.paste((0, 0, 0), (0, 0, 50, 100))  # black strip at the left edge
    data = encode(wide, "PNG")
    assert images.load_for_model(data, 64, crop="full")[:, 0].mean() < 10
    assert images.load_for_model(data, 64, crop="center")[:, 0].mean() > 245
    with pytest.raises(ValueError):
        images.load_for_model(data, 64, crop="zoom")
