"""Turn product photos into backbone feature vectors, batched, streaming and cached.

:class:`Embedder` wraps a backbone (see :mod:`core.backbones`) with the
pre-processing that decides what the features mean: input resolution, crop and
flip test-time augmentation (the feature of a photo and of its mirror image,
averaged). Those settings are part of the embedding's *key* (e.g.
``efficientnet_lite0`` or ``efficientnet_lite0@288``), under which the catalogue
caches vectors, so changing a setting never mixes incompatible features.
*Augmented views* (random crops and mirrors of a labelled photo, key
``<key>#view<i>``) are extra training examples for the head: they teach it that a
product is the same product when framed differently, which a catalogue of
near-identical shots cannot teach on its own.
:func:`embed_catalog` embeds every product that has no vector under that key yet,
decoding the next chunk of photos on worker threads while the model runs, and
writes each chunk to the catalogue as soon as it is done (memory does not grow
with the catalogue, and an interrupted run resumes where it stopped).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from core import backbones, config, images
from core.catalog import Catalog

ProgressCallback = Callable[[int, int, str], None]


class Embedder:
    """Feature extractor: photos in, ``(n, feature_dim)`` float32 vectors out."""

    def __init__(self, backbone: str = config.DEFAULT_BACKBONE, weights: str | None = "imagenet",
                 image_size: int | None = None, crop: str = "full", flip_tta: bool = True,
                 batch_size: int | None = None, decode_workers: int | None = None):
        spec = backbones.spec(backbone)
        if crop not in ("full", "center"):
            raise ValueError(f"crop must be 'full' or 'center', got {crop!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.backbone = backbone
        self.weights = weights
        self.image_size = int(image_size or spec.image_size)
        self.crop = crop
        self.flip_tta = flip_tta
        self._batch_size = batch_size
        self.decode_workers = decode_workers or max(1, min(4, os.cpu_count() or 1))
        self.feature_dim = spec.feature_dim
        self._model = None
        self._forward = None

    @property
    def key(self) -> str:
        """Name under which this configuration's vectors are cached in the catalogue."""
        spec = backbones.spec(self.backbone)
        key = self.backbone
        if self.image_size != spec.image_size:
            key += f"@{self.image_size}"
        if self.crop != "full":
            key += f"+{self.crop}"
        if not self.flip_tta:
            key += "+noflip"
        if self.weights not in ("imagenet",):
            key += "+random" if self.weights is None else f"+weights:{os.path.basename(str(self.weights))}"
        return key

    @property
    def batch_size(self) -> int:
        """Photos per forward pass; chosen per machine unless given (see :func:`config.embedding_batch_size`)."""
        if self._batch_size is None:
            self._batch_size = config.embedding_batch_size()
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._batch_size = int(value)

    @property
    def model(self):
        if self._model is None:
            self._model = backbones.build_feature_model(self.backbone, self.weights, self.image_size)
        return self._model

    def _compiled_forward(self):
        if self._forward is None:
            import tensorflow as tf

            model = self.model

            @tf.function(reduce_retracing=True)
            def forward(pixels, flip):
                pixels = tf.cast(pixels, tf.float32)
                features = model(pixels, training=False)
                if flip:
                    features = (features + model(tf.reverse(pixels, axis=[2]), training=False)) / 2.0
                return features

            self._forward = forward
        return self._forward

    def embed_pixels(self, pixels: np.ndarray, flip_tta: bool | None = None) -> np.ndarray:
        """``pixels``: uint8 ``(n, image_size, image_size, 3)``; returns float32 ``(n, feature_dim)``.

        ``flip_tta`` overrides the embedder's setting (augmented views are
        already randomly mirrored, so averaging them with a mirror is wasted work).
        """
        flip = self.flip_tta if flip_tta is None else flip_tta
        pixels = np.asarray(pixels)
        if pixels.ndim != 4 or pixels.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"expected pixels of shape (n, {self.image_size}, {self.image_size}, 3), "
                             f"got {pixels.shape}")
        forward = self._compiled_forward()
        count = len(pixels)
        if count == 0:
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        # Every call sees the same batch shape: a short last batch is padded (a few wasted
        # images) rather than making TensorFlow trace the graph again (seconds, per shape).
        padding = -count % self.batch_size
        if padding:
            pixels = np.concatenate([pixels, np.zeros((padding, *pixels.shape[1:]), dtype=pixels.dtype)])
        outputs = [forward(pixels[start:start + self.batch_size], flip).numpy()
                   for start in range(0, len(pixels), self.batch_size)]
        return np.concatenate(outputs)[:count].astype(np.float32)

    def load_pixels(self, source) -> np.ndarray:
        return images.load_for_model(source, self.image_size, self.crop)

    def view_key(self, view: int) -> str:
        """Cache key of augmented training view number ``view`` (0-based)."""
        return f"{self.key}#view{view}"

    def load_view_pixels(self, source_and_seed) -> np.ndarray:
        """A random crop (55-90% of each side, aspect 4:5 to 5:4) of the photo, mirrored half the time.

        Seeded per product and view, so a view's features are reproducible.
        """
        from PIL import Image

        source, seed = source_and_seed
        rng = np.random.default_rng(seed)
        image = images.decode(source, target_size=self.image_size)
        width, height = image.size
        side, aspect = rng.uniform(0.55, 0.9), rng.uniform(0.8, 1.25)
        crop_width = max(1, min(width, int(width * side * np.sqrt(aspect))))
        crop_height = max(1, min(height, int(height * side / np.sqrt(aspect))))
        left = int(rng.integers(0, width - crop_width + 1))
        top = int(rng.integers(0, height - crop_height + 1))
        image = image.crop((left, top, left + crop_width, top + crop_height))
        if rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        return np.asarray(image.resize((self.image_size, self.image_size), Image.BILINEAR), dtype=np.uint8)

    def embed_sources(self, sources: Sequence, progress: ProgressCallback | None = None, loader=None,
                      flip_tta: bool | None = None) -> tuple[np.ndarray, list[tuple[int, str]]]:
        """Embed paths or bytes; return ``(vectors, failures)``; failed rows are NaN.

        ``loader`` turns one source into pixels (default :meth:`load_pixels`).
        """
        vectors = np.full((len(sources), self.feature_dim), np.nan, dtype=np.float32)
        failures: list[tuple[int, str]] = []
        for indices, pixels, errors in self._decoded_batches(list(enumerate(sources)), loader or self.load_pixels):
            failures.extend(errors)
            if len(indices):
                vectors[indices] = self.embed_pixels(pixels, flip_tta)
            if progress:
                progress(int(min(len(sources), (indices.max() + 1) if len(indices) else 0)), len(sources), "")
        return vectors, failures

    def _decoded_batches(self, numbered_sources: list[tuple[int, object]], loader):
        """Yield ``(indices, pixels, errors)`` per batch, decoding batch i+1 while i is embedded."""

        def decode(entry):
            index, source = entry
            try:
                return index, loader(source), None
            except images.ImageError as error:
                return index, None, str(error)
            except OSError as error:
                return index, None, f"cannot read image ({error.strerror or error})"

        def decode_batch(executor, batch):
            return [executor.submit(decode, entry) for entry in batch]

        batches = [numbered_sources[i:i + self.batch_size] for i in range(0, len(numbered_sources), self.batch_size)]
        with ThreadPoolExecutor(self.decode_workers) as executor:
            pending = decode_batch(executor, batches[0]) if batches else None
            for batch_number in range(len(batches)):
                results = [future.result() for future in pending]
                if batch_number + 1 < len(batches):
                    pending = decode_batch(executor, batches[batch_number + 1])
                good = [(index, array) for index, array, error in results if error is None]
                errors = [(index, error) for index, array, error in results if error is not None]
                indices = np.array([index for index, _ in good], dtype=np.int64)
                pixels = (np.stack([array for _, array in good]) if good
                          else np.zeros((0, self.image_size, self.image_size, 3), np.uint8))
                yield indices, pixels, errors


@dataclass
class EmbedReport:
    key: str
    computed: int = 0
    cached: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def embed_catalog(catalog: Catalog, embedder: Embedder, progress: ProgressCallback | None = None,
                  chunk_size: int = 256, product_ids: Sequence[int] | None = None,
                  view: int | None = None) -> EmbedReport:
    """Embed every product (or ``product_ids``) that has no cached vector under ``embedder.key``.

    With ``view=i``, compute augmented training view ``i`` instead (key
    :meth:`Embedder.view_key`).
    """
    key = embedder.key if view is None else embedder.view_key(view)
    missing = catalog.missing_embeddings(key)
    if product_ids is not None:
        wanted = {int(pid) for pid in product_ids}
        missing = [pid for pid in missing if pid in wanted]
        total = len(wanted)
    else:
        total = catalog.count_products()
    report = EmbedReport(key, cached=total - len(missing))
    if not missing:
        if progress:
            progress(total, total, "all embeddings cached")
        return report
    start = time.perf_counter()
    done = report.cached
    for chunk_start in range(0, len(missing), chunk_size):
        chunk = missing[chunk_start:chunk_start + chunk_size]
        products = catalog.products(chunk)
        if view is None:
            sources, loader = [catalog.image_path(product) for product in products], None
        else:
            sources = [(catalog.image_path(product), int(product.sha256[:12], 16) + 7919 * view)
                       for product in products]
            loader = embedder.load_view_pixels
        stage = "embedding" if view is None else f"augmented view {view + 1}"

        def chunk_progress(done_in_chunk, _total, _message, offset=done):
            if progress:
                progress(offset + done_in_chunk, total, stage)

        vectors, failures = embedder.embed_sources(sources, progress=chunk_progress, loader=loader,
                                                   flip_tta=None if view is None else False)
        good = [i for i in range(len(chunk)) if not np.isnan(vectors[i, 0])]
        catalog.store_embeddings(key, [chunk[i] for i in good], vectors[good])
        report.failed.extend((chunk[i], reason) for i, reason in failures)
        report.computed += len(good)
        done += len(chunk)
        if progress:
            progress(done, total, stage)
    report.seconds = time.perf_counter() - start
    return report
