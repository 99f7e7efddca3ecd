"""Fine-tuning, transfer learning's second stage: the top of the backbone learns the catalogue's categories.

The first stage (:mod:`core.model.head`) trains a head on frozen ImageNet features.
Here the backbone's last convolution (``top_conv``, the 1×1 convolution that makes
the final feature map of each EfficientNet-Lite network) is trained too, with a small
learning rate, together with a softmax classifier; everything below it stays frozen.
On a CPU that is affordable because the frozen part runs once: each labelled photo's
activations at the top convolution's input (the last block's output) are computed once
for the photo, its mirror image and its crop views, and cached in the workspace; every
epoch then trains on those tensors, one randomly chosen pass per product (the views are
the augmentation). BatchNormalization stays frozen: the backbones are built with it
folded into the convolutions (inference statistics), so the trained convolution carries
the frozen normalisation with it.

The fine-tuned convolutions are written into a copy of the feature extractor, saved
under ``workspace/models/``; an :class:`~core.features.Embedder` with that weights file
embeds the catalogue again, and the usual head is trained on those features
(:func:`fine_tune_version`), so a fine-tuned model is a model version like any other.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from core.errors import TrainingError
from core.features.embeddings import Embedder, embed_catalog, prediction_vectors
from core.storage.atomic import atomic_write_bytes
from core.storage.catalog import Catalog, ModelVersion

ProgressCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class _Member:
    name: str
    network: object       # the member's feature model (multi pooling)
    resize: object | None  # the composite's in-graph resize to the member's resolution


def _members(model) -> list[_Member]:
    """The EfficientNet-Lite networks inside a feature model (itself, or the members side by side)."""
    names = {layer.name for layer in model.layers}
    if "top_conv" in names:
        return [_Member(model.name, model, None)]
    members = []
    for layer in model.layers:
        if hasattr(layer, "layers") and "top_conv" in {inner.name for inner in layer.layers}:
            members.append(_Member(layer.name, layer, model.get_layer(f"{layer.name}_resize")
                                   if f"{layer.name}_resize" in names else None))
    return members


def _check_fine_tunable(embedder: Embedder) -> None:
    if not embedder.backbone.startswith("efficientnet_lite") or embedder.pooling != "multi":
        raise TrainingError(f"fine-tuning needs an EfficientNet-Lite backbone with multi pooling (the default); "
                            f"this catalogue's features come from {embedder.key}")


class TopOfNetwork:
    """The trainable top of an embedder's backbone: from cached activations to its feature vector.

    ``activations(pixels)`` runs the frozen part once; ``features(activations)``
    finishes the forward pass with the current top convolutions, which ``model_``
    (activations in, features out) trains.
    """

    def __init__(self, embedder: Embedder):
        _check_fine_tunable(embedder)
        # A backbone of its own: the one passed in may be embedding an upload meanwhile (the app shares it).
        # The top trains on float32 activations, so the tuned network runs in float32 too: an 8-bit
        # copy would mix its features with the cached activations' (and fine-tuning is not the default).
        self.embedder = _copy(embedder, precision="float32" if embedder.precision == "int8" else embedder.precision)
        self._members = _members(self.embedder.model)
        if not self._members:
            raise TrainingError(f"no top convolution found in {embedder.key}")
        self._trunk = None
        self.model_, self.convolutions_ = self._build()

    def _build(self):
        import keras
        from keras import layers

        from core.features.pooling import GeneralizedMeanPooling, _block_output

        inputs, parts, convolutions = [], [], []
        for member in self._members:
            source = member.network.get_layer("top_conv")
            last_block = _block_output(member.network, _last_block(member.network))
            previous = member.network.get_layer("previous_block_pool_unit").output
            block_map = keras.Input(tuple(last_block.shape[1:]), name=f"{member.name}_last_block")
            previous_input = keras.Input(tuple(previous.shape[1:]), name=f"{member.name}_previous_block")
            convolution = layers.Conv2D(source.filters, 1, name=f"{member.name}_top_conv")
            top = layers.ReLU(max_value=6.0, name=f"{member.name}_top_activation")(convolution(block_map))
            convolution.set_weights(source.get_weights())
            gem = layers.UnitNormalization(name=f"{member.name}_gem_unit")(
                GeneralizedMeanPooling(3.0, name=f"{member.name}_gem")(top))
            last = layers.UnitNormalization(name=f"{member.name}_last_unit")(
                layers.GlobalAveragePooling2D(name=f"{member.name}_last_pool")(block_map))
            # The same arithmetic as core.features.pooling: three unit parts, scaled to unit length.
            parts.append(layers.Rescaling(1.0 / math.sqrt(3), name=f"{member.name}_multi_scale")(
                layers.Concatenate(name=f"{member.name}_multi")([gem, last, previous_input])))
            inputs += [block_map, previous_input]
            convolutions.append(convolution)
        features = parts[0] if len(parts) == 1 else layers.Rescaling(1.0 / math.sqrt(len(parts)))(
            layers.Concatenate(name="members")(parts))
        return keras.Model(inputs, features, name="top_of_network"), convolutions

    def activations(self, pixels: np.ndarray) -> list[np.ndarray]:
        """uint8 ``(n, size, size, 3)`` -> per member ``[last block map (float16), previous block vector]``."""
        import keras
        import tensorflow as tf

        from core.features.pooling import _block_output

        if self._trunk is None:
            trunks = [keras.Model(m.network.input, [_block_output(m.network, _last_block(m.network)),
                                                    m.network.get_layer("previous_block_pool_unit").output])
                      for m in self._members]

            @tf.function(reduce_retracing=True)
            def trunk(batch):
                batch = tf.cast(batch, tf.float32)
                outputs = []
                for member, network in zip(self._members, trunks):
                    outputs += network(member.resize(batch) if member.resize is not None else batch, training=False)
                return outputs

            self._trunk = trunk
        outputs = [[] for _ in range(2 * len(self._members))]
        batch_size = self.embedder.batch_size
        for start in range(0, len(pixels), batch_size):
            for slot, value in enumerate(self._trunk(pixels[start:start + batch_size])):
                outputs[slot].append(value.numpy().astype(np.float16))
        return [np.concatenate(slot) for slot in outputs]

    def features(self, activations: Sequence[np.ndarray], batch_size: int = 64) -> np.ndarray:
        return self.model_.predict([np.asarray(a, np.float32) for a in activations], batch_size=batch_size,
                                   verbose=0)

    def fine_tuned_embedder(self, weights_path: Path) -> Embedder:
        """Write the trained convolutions into the feature extractor, save its weights, return its embedder."""
        for member, convolution in zip(self._members, self.convolutions_):
            member.network.get_layer("top_conv").set_weights(convolution.get_weights())
        weights_path.parent.mkdir(parents=True, exist_ok=True)
        partial = weights_path.with_name(f".{weights_path.stem}-{uuid.uuid4().hex[:8]}.weights.h5")
        self.embedder.model.save_weights(partial)
        partial.replace(weights_path)
        return _copy(self.embedder, weights=str(weights_path))


def _copy(embedder: Embedder, **changes) -> Embedder:
    settings = dict(backbone=embedder.backbone, weights=embedder.weights, image_size=embedder.image_size,
                    crop=embedder.crop, flip_tta=embedder.flip_tta, batch_size=embedder.batch_size,
                    decode_workers=embedder.decode_workers, pooling=embedder.pooling, views=embedder.views,
                    precision=embedder.precision)
    return Embedder(**{**settings, **changes})


def _last_block(network) -> int:
    return max(int(layer.name.split("_")[0][len("block"):]) for layer in network.layers
               if layer.name.startswith("block"))


class FineTuner:
    """Train the top convolutions and a softmax classifier on cached activations.

    First the classifier alone, on the frozen features of every pass (``classifier_epochs``),
    so the first gradients that reach the convolutions are not a random head's; then both,
    for ``epochs`` epochs of one randomly chosen pass (photo, mirror or crop view) per
    product, with ``learning_rate`` (small: the convolution starts from ImageNet's).
    Learned state: ``classes_``, ``history_`` (loss per epoch), ``seconds_``.
    """

    def __init__(self, epochs: int = 6, learning_rate: float = 1e-4, classifier_epochs: int = 10,
                 label_smoothing: float = 0.1, batch_size: int = 32, logit_scale: float = 16.0, seed: int = 0):
        if epochs < 1 or classifier_epochs < 0:
            raise ValueError(f"epochs must be at least 1 (got {epochs}) and classifier_epochs at least 0 "
                             f"(got {classifier_epochs})")
        if not 0.0 < learning_rate < 1.0:
            raise ValueError(f"learning_rate must be in (0, 1), got {learning_rate}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.epochs = int(epochs)
        self.learning_rate = float(learning_rate)
        self.classifier_epochs = int(classifier_epochs)
        self.label_smoothing = float(label_smoothing)
        self.batch_size = int(batch_size)
        self.logit_scale = float(logit_scale)
        self.seed = int(seed)

    def get_params(self) -> dict:
        return {name: getattr(self, name) for name in ("epochs", "learning_rate", "classifier_epochs",
                                                       "label_smoothing", "batch_size", "logit_scale", "seed")}

    def fit(self, top: TopOfNetwork, passes: Sequence[Sequence[np.ndarray]], labels: Sequence[str],
            progress: ProgressCallback | None = None) -> "FineTuner":
        """``passes``: per pass (photo, mirror, views…) the activations of every product, row for row with
        ``labels``. Trains ``top``'s convolutions in place."""
        import keras
        from keras import layers

        labels = np.asarray(labels, dtype=object)
        self.classes_ = np.array(sorted(set(labels.tolist())), dtype=object)
        if len(self.classes_) < 2:
            raise TrainingError("fine-tuning needs labelled products in at least 2 categories")
        codes = np.searchsorted(self.classes_, labels)
        targets = np.eye(len(self.classes_), dtype=np.float32)[codes]
        started = time.perf_counter()
        keras.utils.set_random_seed(self.seed)
        loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=self.label_smoothing)
        classifier = layers.Dense(len(self.classes_), name="classifier")
        scale = layers.Rescaling(self.logit_scale, name="logit_scale")
        total = self.classifier_epochs + self.epochs
        if self.classifier_epochs:
            frozen = np.concatenate([top.features(activations) for activations in passes])
            vector_input = keras.Input((frozen.shape[1],))
            on_vectors = keras.Model(vector_input, classifier(scale(vector_input)))
            on_vectors.compile(optimizer=keras.optimizers.Adam(3e-3), loss=loss)
            on_vectors.fit(frozen, np.tile(targets, (len(passes), 1)), batch_size=128,
                           epochs=self.classifier_epochs, verbose=0)
            if progress:
                progress(self.classifier_epochs, total, "classifier")
        whole = keras.Model(top.model_.inputs, classifier(scale(top.model_.output)))
        whole.compile(optimizer=keras.optimizers.Adam(self.learning_rate), loss=loss)
        rng = np.random.default_rng(self.seed)
        self.history_ = []
        rows = np.arange(len(labels))
        for epoch in range(self.epochs):
            chosen = rng.integers(0, len(passes), len(labels))
            batch = [np.stack([passes[pass_][slot][row] for row, pass_ in zip(rows, chosen)]).astype(np.float32)
                     for slot in range(len(passes[0]))]
            history = whole.fit(batch, targets, batch_size=self.batch_size, epochs=1, verbose=0, shuffle=True)
            self.history_.append(round(float(history.history["loss"][0]), 4))
            if progress:
                progress(self.classifier_epochs + epoch + 1, total, "fine-tuning")
        self.seconds_ = time.perf_counter() - started
        return self


def _cache_folder(catalog: Catalog, embedder: Embedder) -> Path:
    digest = hashlib.sha256(f"{embedder.key}|views{embedder.views}".encode()).hexdigest()[:16]
    return catalog.workspace / "cache" / f"top-activations-{digest}"


def cached_activations(catalog: Catalog, top: TopOfNetwork, product_ids: Sequence[int],
                       progress: ProgressCallback | None = None) -> tuple[list[int], list[list[np.ndarray]]]:
    """``(product ids whose photo could be read, passes)``: each pass (photo, mirror, then the embedder's
    crop views) a list of per-product activation arrays. Computed once per photo, then read from
    ``workspace/cache``."""
    embedder = top.embedder
    folder = _cache_folder(catalog, embedder)
    kept, per_product = [], []
    products = catalog.products(list(product_ids))
    for number, product in enumerate(products, start=1):
        path = folder / f"{product.sha256}.npz"
        arrays = None
        if path.exists():
            try:
                with np.load(path) as stored:
                    arrays = [stored[f"arr_{slot}"] for slot in range(len(stored.files))]
            except (OSError, ValueError, KeyError):
                arrays = None
        if arrays is None:
            try:
                pixels = embedder.load_photo_and_views((catalog.image_path(product), product.sha256))
            except Exception:  # noqa: BLE001 - an unreadable photo trains without its product, as in embedding
                continue
            pixels = np.concatenate([pixels[:1], pixels[:1, :, ::-1], pixels[1:]])
            arrays = top.activations(pixels)
            buffer = io.BytesIO()
            np.savez(buffer, *arrays)
            atomic_write_bytes(path, buffer.getvalue())
        kept.append(product.id)
        per_product.append(arrays)
        if progress:
            progress(number, len(products), "activations")
    if not per_product:
        return [], []
    count = len(per_product[0][0])
    passes = [[np.stack([arrays[slot][pass_] for arrays in per_product]) for slot in range(len(per_product[0]))]
              for pass_ in range(count)]
    return kept, passes


def _store_features(catalog: Catalog, top: TopOfNetwork, tuned: Embedder, ids: Sequence[int],
                    passes: Sequence[Sequence[np.ndarray]]) -> None:
    """The fine-tuned features of products whose activations are cached, as embedding them would store them
    (photo averaged with its mirror, the crop views, their mean), without running the frozen part again."""
    features = [top.features(activations) for activations in passes]
    photos = (features[0] + features[1]) / 2.0 if tuned.flip_tta else features[0]
    views = np.stack(features[2:], axis=1)
    for number in range(tuned.views):
        catalog.store_embeddings(tuned.view_key(number), ids, views[:, number])
    catalog.store_embeddings(tuned.key, ids, photos)
    if tuned.views:
        catalog.store_embeddings(tuned.prediction_key, ids, prediction_vectors(photos, views))


# Activations of one product (photo, mirror, 4 views, both networks) take about 0.7 MB in memory
# while fine-tuning: this many products keep it near 3.5 GB, whatever the catalogue's size.
DEFAULT_MAX_PRODUCTS = 5000


def balanced_sample(labels: dict[int, str], limit: int, seed: int = 0) -> list[int]:
    """At most ``limit`` product ids, taken from each category in turn (shuffled within it), sorted."""
    if len(labels) <= limit:
        return sorted(labels)
    rng = np.random.default_rng(seed)
    by_category: dict[str, list[int]] = {}
    for pid in sorted(labels):
        by_category.setdefault(labels[pid], []).append(pid)
    queues = [list(rng.permutation(members)) for _, members in sorted(by_category.items())]
    chosen: list[int] = []
    while len(chosen) < limit:
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(int(queue.pop()))
    return sorted(chosen)


def fine_tune_version(catalog: Catalog, embedder: Embedder, tuner: FineTuner | None = None,
                      progress: ProgressCallback | None = None, activate: bool = True,
                      max_products: int = DEFAULT_MAX_PRODUCTS) -> ModelVersion:
    """Fine-tune the top of ``embedder``'s backbone on the current labels; store the result as a model version.

    Steps (each reported to ``progress``): activations of labelled photos (cached), the
    fine-tuning itself, the catalogue embedded again with the fine-tuned backbone, and
    the usual head trained on those features (on every label). Above ``max_products``
    labelled products the network is fine-tuned on that many, taken from every category
    in turn, so memory stays bounded. The version's metrics carry ``fine_tune_seconds``,
    the per-epoch loss and ``n_fine_tuned``.
    """
    from core.model.training import train_version

    if max_products < 2:
        raise ValueError(f"max_products must be at least 2, got {max_products}")
    tuner = tuner or FineTuner()
    labels = catalog.current_labels()
    if len(set(labels.values())) < 2:
        raise TrainingError("fine-tuning needs labelled products in at least 2 categories")
    started = time.perf_counter()
    top = TopOfNetwork(embedder)
    ids, passes = cached_activations(catalog, top, balanced_sample(labels, max_products), progress=progress)
    activations_seconds = time.perf_counter() - started
    if not ids:
        raise TrainingError("no labelled photo could be read for fine-tuning")
    tuner.fit(top, passes, [labels[pid] for pid in ids], progress=progress)
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    weights = catalog.workspace / "models" / f"backbone-{stamp}.weights.h5"
    tuned = top.fine_tuned_embedder(weights)
    embedding_started = time.perf_counter()
    _store_features(catalog, top, tuned, ids, passes)
    embed_catalog(catalog, tuned, progress=progress)  # the products without cached activations
    embedding_seconds = time.perf_counter() - embedding_started
    metrics = {"fine_tuned": True, "fine_tune_seconds": round(tuner.seconds_, 1), "n_fine_tuned": len(ids),
               "activations_seconds": round(activations_seconds, 1),
               "fine_tuned_embedding_seconds": round(embedding_seconds, 1), "fine_tune_loss": tuner.history_}
    params = {"fine_tuning": tuner.get_params(), "base_embedding": embedder.key}
    return train_version(catalog, tuned, progress=progress, activate=activate, extra_metrics=metrics,
                         extra_params=params)
