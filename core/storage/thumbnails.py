"""Small JPEG previews of products, made once and kept on disk.

Grids and galleries show hundreds of products per page; decoding full photos
each time would be slow, so :func:`thumbnail` writes ``workspace/thumbnails/
<sha256>.jpg`` on first use (upright, at most 256 px) and returns its path.
"""

from __future__ import annotations

from pathlib import Path

from core.storage import images
from core.storage.atomic import atomic_write_bytes
from core.storage.catalog import Catalog, Product

THUMBNAIL_SIZE = 256


def thumbnail(catalog: Catalog, product: Product | int) -> Path | None:
    """Path of the product's thumbnail, or None if its photo can no longer be read."""
    if isinstance(product, int):
        product = catalog.get_product(product)
    path = catalog.workspace / "thumbnails" / f"{product.sha256}.jpg"
    if not path.exists():
        try:
            atomic_write_bytes(path, images.thumbnail_bytes(catalog.image_path(product), THUMBNAIL_SIZE))
        except (images.ImageError, OSError):
            return None
    return path
