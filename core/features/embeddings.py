"""Turn product photos into backbone feature vectors, batched, streaming and cached.

:class:`Embedder` wraps a backbone (see :mod:`core.features.backbones`) with the
pre-processing that decides what the features mean: input resolution, crop and
flip test-time augmentation (the feature of a photo and of its mirror image,
averaged). Those settings are part of the embedding's *key* (e.g.
``efficientnet_lite0`` or ``efficientnet_lite0@288``), under which the catalogue
caches vectors, so changing a setting never mixes incompatible features.
*Views* (``views`` seeded random crops of each photo, mirrored half the time, key
``<key>#view<i>``) serve twice: for labelled photos they are extra training rows
that teach the head a product is the same product when framed differently (which
a catalogue of near-identical shots cannot teach on its own), and every photo's
prediction uses the average of its own vector and its views' (``<key>#tta<views>``,
:attr:`Embedder.prediction_key`): test-time augmentation, stored once so that
predicting stays one vector per product.
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

from core import settings
from core.features import backbones
from core.storage import images
from core.storage.catalog import Catalog

ProgressCallback = Callable[[int, int, str], None]


def prediction_vectors(photos: np.ndarray, views: np.ndarray) -> np.ndarray:
    """``(n, dim)``: each photo's vector averaged with its views' (``views``: ``(n, views, dim)``)."""
    return (photos + views.sum(axis=1)) / (1 + views.shape[1])


def view_seed(sha256: str, view: int) -> int:
    """Seed of a product's view ``view``: from the photo's content, so a view is reproducible anywhere."""
    return int(sha256[:12], 16) + 7919 * view


class Embedder:
    """Feature extractor: photos in, ``(n, feature_dim)`` float32 vectors out."""

    def __init__(self, backbone: str | None = None, weights: str | None = "imagenet",
                 image_size: int | None = None, crop: str = "full", flip_tta: bool | None = None,
                 batch_size: int | None = None, decode_workers: int | None = None, pooling: str | None = None,
                 views: int | None = None, precision: str | None = None):
        configured = settings.current()
        backbone = backbone or configured.backbone
        spec = backbones.spec(backbone)
        if crop not in ("full", "center"):
            raise ValueError(f"crop must be 'full' or 'center', got {crop!r}")
        if precision is not None and precision not in settings.PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(settings.PRECISIONS)}, got {precision!r}")
        if batch_size is not None and batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.backbone = backbone
        self.weights = weights
        self.image_size = int(image_size or spec.image_size)
        self.crop = crop
        self.flip_tta = configured.mirror if flip_tta is None else bool(flip_tta)
        self._batch_size = batch_size
        # Decoding a photo and its views is a small share of embedding them: one thread per two cores
        # keeps ahead of the model without taking cores from it.
        self.decode_workers = decode_workers or max(1, min(4, (os.cpu_count() or 1) // 2))
        self.pooling = pooling or spec.default_pooling
        self.feature_dim = spec.feature_dim_for(self.pooling)
        self._precision = precision
        self.views = configured.views if views is None else int(views)
        if self.views < 0:
            raise ValueError(f"views must be 0 or more, got {views}")
        self._model = None
        self._forward = None
        # CPU threads of the int8 runtime; None: all of this machine's (a Ray actor sets its share).
        self.threads: int | None = None
        self._runtime: str | None = None

    @property
    def key(self) -> str:
        """Name under which this configuration's vectors are cached in the catalogue."""
        spec = backbones.spec(self.backbone)
        key = self.backbone
        if self.image_size != spec.image_size:
            key += f"@{self.image_size}"
        if self.pooling != "avg":
            key += f"+{self.pooling}"
        if self.crop != "full":
            key += f"+{self.crop}"
        if not self.flip_tta:
            key += "+noflip"
        if self.weights not in ("imagenet",):
            key += "+random" if self.weights is None else f"+weights:{os.path.basename(str(self.weights))}"
        if self.precision == "int8":
            key += "+int8"
        return key

    @property
    def batch_size(self) -> int:
        """Photos per forward pass; chosen per machine unless given (see :func:`core.settings.embedding_batch_size`)."""
        if self._batch_size is None:
            self._batch_size = settings.embedding_batch_size()
        return self._batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        self._batch_size = int(value)

    @property
    def precision(self) -> str:
        """Arithmetic of the forward pass: as given, else ``$PRODUCTLENS_PRECISION``
        (see :func:`core.settings.embedding_precision`). bfloat16 is not part of the key: its
        features are the float32 ones up to rounding (README, ``benchmarks/precision.py``);
        int8 (:mod:`core.features.quantized`) is, being further from them."""
        if self._precision is None:
            self._precision = settings.embedding_precision()
        return self._precision

    @property
    def runtime(self) -> str:
        """What runs the network: ``"tensorflow"``, or for int8 ``"onnxruntime"`` or ``"openvino"``
        (:func:`core.settings.int8_runtime`; once the network is built, the one actually running it)."""
        if self.precision != "int8":
            return "tensorflow"
        return self._runtime or settings.int8_runtime()

    @property
    def model(self):
        if self._model is None:
            # An int8 embedder's Keras model (fine-tuning, export) is the float32 one it was quantized from.
            precision = "float32" if self.precision == "int8" else self.precision
            self._model = backbones.build_feature_model(self.backbone, self.weights, self.image_size, self.pooling,
                                                        precision)
        return self._model

    def _compiled_forward(self):
        if self._forward is None and self.precision == "int8":
            from core.features.quantized import quantized_backbone

            network = quantized_backbone(self.backbone, self.weights, self.image_size, self.pooling, self.threads)
            self._runtime = network.runtime

            def forward(pixels, flip):
                if not flip:
                    return network(pixels)
                # Photos and mirrors in one call: its parts run on all the threads at once.
                features = network(np.concatenate([pixels, pixels[:, :, ::-1]]))
                return (features[:len(pixels)] + features[len(pixels):]) / 2.0

            self._forward = forward
        if self._forward is None:
            import tensorflow as tf

            model = self.model

            @tf.function(reduce_retracing=True)
            def forward(pixels, flip):
                pixels = tf.cast(pixels, tf.float32)
                features = tf.cast(model(pixels, training=False), tf.float32)
                if flip:
                    mirrored = tf.cast(model(tf.reverse(pixels, axis=[2]), training=False), tf.float32)
                    features = (features + mirrored) / 2.0
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
        # Every call to TensorFlow sees the same batch shape: a short last batch is padded (a few
        # wasted images) rather than making it trace the graph again (seconds, per shape). The
        # 8-bit runtime takes any batch as it comes.
        padding = -count % self.batch_size
        if padding and self.precision != "int8":
            pixels = np.concatenate([pixels, np.zeros((padding, *pixels.shape[1:]), dtype=pixels.dtype)])
        outputs = [np.asarray(forward(pixels[start:start + self.batch_size], flip))
                   for start in range(0, len(pixels), self.batch_size)]
        return np.concatenate(outputs)[:count].astype(np.float32)

    def load_pixels(self, source) -> np.ndarray:
        return images.load_for_model(source, self.image_size, self.crop)

    def view_key(self, view: int) -> str:
        """Cache key of augmented training view number ``view`` (0-based)."""
        return f"{self.key}#view{view}"

    @property
    def prediction_key(self) -> str:
        """Cache key of the vectors predictions use: the photo averaged with its ``views`` crops."""
        return f"{self.key}#tta{self.views}" if self.views else self.key

    def load_photo_and_views(self, source_and_sha256) -> np.ndarray:
        """``(1 + views, size, size, 3)``: the photo, then its views (the crops :meth:`load_view_pixels`
        makes with :func:`view_seed`), all from one decode of the file."""
        source, sha256 = source_and_sha256
        image = images.decode(source, target_size=self.image_size)
        photo = images.resize_for_model(image, self.image_size, self.crop)
        crops = [self._view(image, view_seed(sha256, view)) for view in range(self.views)]
        return np.stack([photo, *crops])

    def load_view_pixels(self, source_and_seed) -> np.ndarray:
        """A random crop (55-90% of each side, aspect 4:5 to 5:4) of the photo, mirrored half the time.

        Seeded per product and view, so a view's features are reproducible.
        """
        source, seed = source_and_seed
        return self._view(images.decode(source, target_size=self.image_size), seed)

    def _view(self, image, seed: int) -> np.ndarray:
        from PIL import Image

        rng = np.random.default_rng(seed)
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

    def embed_with_views(self, sources_and_hashes: Sequence, progress: ProgressCallback | None = None
                         ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        """Embed each photo and its ``views`` crops from one decode.

        ``sources_and_hashes``: ``(path or bytes, the photo's SHA-256 hex)`` pairs (the
        crops are seeded by it, see :func:`view_seed`).
        Returns ``(photo vectors (n, dim), view vectors (n, views, dim), failures)``;
        failed rows are NaN.
        """
        count = len(sources_and_hashes)
        photos = np.full((count, self.feature_dim), np.nan, dtype=np.float32)
        crops = np.full((count, self.views, self.feature_dim), np.nan, dtype=np.float32)
        failures: list[tuple[int, str]] = []
        size = self.image_size
        for indices, pixels, errors in self._decoded_batches(list(enumerate(sources_and_hashes)),
                                                             self.load_photo_and_views,
                                                             shape=(1 + self.views, size, size, 3)):
            failures.extend(errors)
            if len(indices):
                photos[indices] = self.embed_pixels(pixels[:, 0])
                if self.views:
                    # Views are already mirrored at random: averaging them with a mirror is wasted work.
                    flat = self.embed_pixels(pixels[:, 1:].reshape(-1, size, size, 3), flip_tta=False)
                    crops[indices] = flat.reshape(len(indices), self.views, -1)
            if progress:
                progress(int(min(count, (indices.max() + 1) if len(indices) else 0)), count, "")
        return photos, crops, failures

    def _decoded_batches(self, numbered_sources: list[tuple[int, object]], loader, shape=None):
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
                shape = shape or (self.image_size, self.image_size, 3)
                pixels = np.stack([array for _, array in good]) if good else np.zeros((0, *shape), np.uint8)
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

    Each photo's ``embedder.views`` views and its prediction vector come from the
    same decode and are stored with it (the prediction vector last, so a run
    interrupted mid-chunk redoes that chunk). With ``view=i``, compute only view
    ``i`` (key :meth:`Embedder.view_key`), e.g. for more training views than the
    embedder keeps.
    """
    with_views = view is None and embedder.views > 0
    key = embedder.key if view is None else embedder.view_key(view)
    missing = catalog.missing_embeddings(embedder.prediction_key if with_views else key)
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
    stage = "embedding" if view is None else f"augmented view {view + 1}"
    for chunk_start in range(0, len(missing), chunk_size):
        chunk = missing[chunk_start:chunk_start + chunk_size]
        products = catalog.products(chunk)

        def chunk_progress(done_in_chunk, _total, _message, offset=done):
            if progress:
                progress(offset + done_in_chunk, total, stage)

        if with_views:
            sources = [(catalog.image_path(product), product.sha256) for product in products]
            vectors, crops, failures = embedder.embed_with_views(sources, progress=chunk_progress)
        elif view is None:
            sources = [catalog.image_path(product) for product in products]
            vectors, failures = embedder.embed_sources(sources, progress=chunk_progress)
        else:
            sources = [(catalog.image_path(product), view_seed(product.sha256, view)) for product in products]
            vectors, failures = embedder.embed_sources(sources, progress=chunk_progress,
                                                       loader=embedder.load_view_pixels, flip_tta=False)
        good = [i for i in range(len(chunk)) if not np.isnan(vectors[i, 0])]
        good_ids = [chunk[i] for i in good]
        if with_views:
            for number in range(embedder.views):
                catalog.store_embeddings(embedder.view_key(number), good_ids, crops[good, number])
        catalog.store_embeddings(key, good_ids, vectors[good])
        if with_views:
            catalog.store_embeddings(embedder.prediction_key, good_ids,
                                     prediction_vectors(vectors[good], crops[good]))
        report.failed.extend((chunk[i], reason) for i, reason in failures)
        report.computed += len(good)
        done += len(chunk)
        if progress:
            progress(done, total, stage)
    report.seconds = time.perf_counter() - start
    return report
