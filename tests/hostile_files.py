"""Generate the hostile and unusual inputs that suppliers really send, for tests and benchmarks.

``make_corpus(folder)`` writes every case into ``folder`` (no binary blobs are kept in
the repository) and returns ``{case name: (path, expected)}`` where ``expected`` is
``"imported"``, ``"rejected"`` or ``"skipped"``.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

DEMO = Path(__file__).resolve().parents[1] / "assets" / "demo"


def _photo() -> Image.Image:
    return Image.open(sorted((DEMO / "Banana").glob("*.jpg"))[0]).convert("RGB")


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A valid PNG header declaring a huge image, with only a few bytes of data."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(b"\x00" * (width + 1)) for _ in range(8)) + compressor.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def make_corpus(folder: Path) -> dict[str, tuple[Path, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    photo = _photo()
    cases: dict[str, tuple[Path, str]] = {}

    def write(case, name, data, expected):
        path = folder / name
        path.write_bytes(data)
        cases[case] = (path, expected)

    jpeg = _encode(photo, "JPEG", quality=90)
    write("zero-byte file", "empty.jpg", b"", "rejected")
    write("truncated JPEG", "truncated.jpg", jpeg[: len(jpeg) // 3], "rejected")
    bad_crc = bytearray(_encode(photo, "PNG"))
    bad_crc[bad_crc.index(b"IDAT") + 20] ^= 0xFF
    write("PNG with bad CRC", "bad-crc.png", bytes(bad_crc), "rejected")
    write("random bytes named .jpg", "random.jpg", os.urandom(20000), "rejected")
    write("text file named .png", "notes.png", b"this is a text file, not a picture\n" * 20, "rejected")
    write("decompression bomb (20000x20000 PNG)", "bomb.png", png_bomb(), "rejected")
    write("1x1 image", "one-pixel.png", _encode(Image.new("RGB", (1, 1), "red"), "PNG"), "imported")
    huge = Image.new("RGB", (12000, 12000), (200, 180, 40))
    write("12000x12000 real-size image", "huge.jpg", _encode(huge, "JPEG", quality=70), "rejected")
    del huge
    frames = [photo.rotate(angle) for angle in (0, 10, 20)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    write("animated GIF", "animated.gif", buffer.getvalue(), "imported")
    write("CMYK JPEG", "cmyk.jpg", _encode(photo.convert("CMYK"), "JPEG"), "imported")
    sixteen = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    write("16-bit PNG", "sixteen-bit.png", _encode(Image.fromarray(sixteen), "PNG"), "imported")
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    write("image with alpha", "alpha.png", _encode(rgba, "PNG"), "imported")
    exif = Image.Exif()
    exif[0x0112] = 6
    write("EXIF-rotated JPEG", "rotated.jpg", _encode(photo.rotate(90, expand=True), "JPEG", exif=exif.tobytes()),
          "imported")
    odd = os.fsdecode(b"caf\xe9-photo.jpg")
    write("non-UTF-8 file name", odd, _encode(photo.rotate(5), "JPEG"), "imported")
    write("very long file name", "p" * 240 + ".jpg", _encode(photo.rotate(7), "JPEG"), "imported")

    slip = io.BytesIO()
    with zipfile.ZipFile(slip, "w") as archive:
        archive.writestr("../../escaped.jpg", _encode(photo.rotate(11), "JPEG"))
        archive.writestr("/absolute.jpg", _encode(photo.rotate(12), "JPEG"))
    write("zip with ../ paths (zip slip)", "slip.zip", slip.getvalue(), "rejected")
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for index in range(10):
            archive.writestr(f"layer{index}.jpg", b"\x00" * (300 * 2**20))
    write("zip bomb (3 GB of zeros)", "bomb.zip", bomb.getvalue(), "rejected")
    nested = io.BytesIO()
    with zipfile.ZipFile(nested, "w") as archive:
        archive.writestr("shoot/Fruit/Banana/a.jpg", _encode(photo.rotate(13), "JPEG"))
        archive.writestr("shoot/Fruit/Banana/b.png", _encode(photo.rotate(14), "PNG"))
        archive.writestr("shoot/readme.txt", "photos from supplier X")
        archive.writestr("shoot/Fruit/prices.xlsx", b"PK\x03\x04not really")
    write("zip with nested folders and non-image files", "nested.zip", nested.getvalue(), "imported")
    return cases
