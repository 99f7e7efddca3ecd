"""Decode product photos safely and turn them into model inputs.

Everything that reads pixels goes through here, so every caller gets the same
guarantees: the format is one we accept, the pixel count is checked *before*
decoding (decompression bombs never allocate), truncated data is an error rather
than grey pixels, EXIF orientation is applied, and any mode (CMYK, 16-bit,
palette, alpha) becomes 8-bit RGB, with transparency composited on white as a
packshot would be. Failures raise :class:`ImageError` whose message is the reason
shown to the user.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core import settings
from core.errors import ImageError

ACCEPTED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "MPO"}
FORMAT_EXTENSIONS = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp",
                     "GIF": ".gif", "TIFF": ".tif"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}

# Pillow's own bomb guard is a warning below 2x its limit; ours is a hard error.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int

    @property
    def extension(self) -> str:
        return FORMAT_EXTENSIONS[self.format]


def _open(data: bytes | Path | str) -> Image.Image:
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    try:
        image = Image.open(source)
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised file format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"unreadable image ({error})") from None
    if image.format not in ACCEPTED_FORMATS:
        raise ImageError(f"unsupported image format {image.format}; accepted: JPEG, PNG, WebP, BMP, GIF, TIFF")
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError("image has no pixels")
    limit = settings.current().max_pixels
    if width * height > limit:
        raise ImageError(
            f"image is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the "
            f"{limit / 1e6:.0f} MP limit (PRODUCTLENS_MAX_MEGAPIXELS); possibly a decompression bomb"
        )
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit and 32-bit greyscale: scale the actual range into 8 bits.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    elif image.mode == "F":
        array = np.nan_to_num(np.asarray(image, dtype=np.float64))
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) * (255.0 / (high - low)) if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB") if image.mode != "RGB" else image


def decode(data: bytes | Path | str, target_size: int | None = None) -> Image.Image:
    """Decode fully to an upright 8-bit RGB image.

    With ``target_size``, JPEGs are decoded at the smallest DCT scale (1/2, 1/4,
    1/8) that still covers ``target_size`` pixels on the short side, which is
    several times faster than a full decode and loses nothing after resizing.
    """
    image = _open(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if target_size and image.format in ("JPEG", "MPO"):
                width, height = image.size
                scale = max(target_size / width, target_size / height)
                image.draft("RGB", (max(1, int(width * scale)), max(1, int(height * scale))))
            image.seek(0)  # first frame of animated GIF/WebP/TIFF
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return _to_rgb(image)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        reason = str(error) or type(error).__name__
        if "truncated" in reason.lower() or isinstance(error, EOFError):
            raise ImageError(f"truncated or corrupt image data ({reason})") from None
        raise ImageError(f"corrupt image data ({reason})") from None
    except MemoryError:
        raise ImageError("image too large to decode in memory") from None


def validate(data: bytes | Path | str) -> ImageInfo:
    """Check that ``data`` is a usable photo; return its format and upright size.

    The whole file is decoded (at reduced JPEG scale) because truncation and
    corrupt scans only show up while decoding, not in the header.
    """
    image = _open(data)
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # broken EXIF blocks are common and harmless
        orientation = 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    decode(data, target_size=512)
    return ImageInfo(image.format, width, height)


def resize_for_model(image: Image.Image, image_size: int, crop: str = "full") -> np.ndarray:
    """Return a ``(image_size, image_size, 3)`` uint8 array.

    ``crop="full"`` squeezes the whole photo into the square (product photos are
    framed on the product, so nothing is cut off); ``"center"`` scales the short
    side and cuts the centre square, the ImageNet evaluation convention.
    """
    if crop == "center":
        image = ImageOps.fit(image, (image_size, image_size), Image.BILINEAR)
    elif crop == "full":
        image = image.resize((image_size, image_size), Image.BILINEAR, reducing_gap=None)
    else:
        raise ValueError(f"crop must be 'full' or 'center', got {crop!r}")
    return np.asarray(image, dtype=np.uint8)


def load_for_model(data: bytes | Path | str, image_size: int, crop: str = "full") -> np.ndarray:
    return resize_for_model(decode(data, target_size=image_size), image_size, crop)


def thumbnail_bytes(data: bytes | Path | str, size: int = 256) -> bytes:
    """A small JPEG of the upright photo, for grids and galleries."""
    image = decode(data, target_size=size)
    image.thumbnail((size, size), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()
