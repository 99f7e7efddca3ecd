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
            # A cache: rebuilt if a crash loses it, so not worth an fsync per photo while a grid renders.
            atomic_write_bytes(path, images.thumbnail_bytes(catalog.image_path(product), THUMBNAIL_SIZE),
                               durable=False)
        except (images.ImageError, OSError):
            return None
    return path


PREVIEW_SIZE = 96


def preview_data_url(catalog: Catalog, product: Product | int, size: int = PREVIEW_SIZE) -> str | None:
    """A tiny JPEG of the product as a ``data:`` URL (for tooltips and table cells that cannot fetch
    files), or None if its photo can no longer be read."""
    if isinstance(product, int):
        product = catalog.get_product(product)
    return _data_url(catalog, product, size)


def preview_data_urls(catalog: Catalog, product_ids, size: int = PREVIEW_SIZE) -> dict[int, str | None]:
    """:func:`preview_data_url` of several products, their rows read in one query."""
    return {product.id: _data_url(catalog, product, size) for product in catalog.products(list(product_ids))}


def _data_url(catalog: Catalog, product: Product, size: int) -> str | None:
    import base64

    try:
        # From the photo itself, decoded at a reduced JPEG scale: about a millisecond, and the same bytes
        # whether or not its thumbnail has been made yet.
        data = images.thumbnail_bytes(catalog.image_path(product), size)
    except (images.ImageError, OSError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
