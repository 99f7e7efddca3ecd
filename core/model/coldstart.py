"""Predictions before anyone has labelled: nearest reference photo (prototype) per category.

Give one or a few reference photos per category (a folder of category folders,
e.g. the catalogue packshots). Each category's *prototype* is the mean of its
references' L2-normalised features; a product is scored by cosine similarity to
every prototype, and a softmax with temperature ``T`` turns the scores into
probabilities. Reference packshots and catalogue photos differ in style, so the
prototypes are then adapted to the catalogue, without any label
(:func:`adapt_to_catalogue`): every feature is centred on the catalogue's mean
feature ``mu`` (removing what all photos share, e.g. shelf background) and
*whitened* with the catalogue's own covariance ``C``, shrunk towards the identity
(``x <- norm((C + a I)^(-1/2) (x - mu))``, ``a`` a multiple of ``C``'s mean
eigenvalue): directions in which all catalogue photos vary a lot (lighting,
framing) count less, rare ones that tell products apart count more. Then a few
rounds of soft k-means move each prototype halfway towards the catalogue
products it attracts (``P <- norm(0.5 P0 + 0.5 mean_w(x))``, weights
``softmax(s / tau)``). Each step raises cold-start accuracy on the grocery
benchmark (README, ``benchmarks/coldstart.py``); the adaptation is transductive:
it learns from the very products it then predicts. The result is an ordinary Keras head
(``UnitNormalization``, centring, whitening, ``UnitNormalization``, then a bias-free
``Dense`` whose weights are the prototypes), stored as a model version, so
everything that works with a trained head (Review, predictions, export) works
with it too.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np

from core.features.embeddings import Embedder
from core.model.head import HeadClassifier
from core.model.training import EmbedderSettings, TrainingError
from core.storage import ingest
from core.storage.catalog import Catalog, ModelVersion

DEFAULT_TEMPERATURE = 20.0
REFINE_ITERATIONS = 10
REFINE_SHARPNESS = 50.0
REFINE_ANCHOR = 0.5
# Shrinkage of the whitening, in units of the covariance's mean eigenvalue: 0 would be full whitening
# (noise in rare directions blown up), a large value plain centring. Chosen on the grocery *train*
# photos (their labels are not used by cold start), not on val.
WHITENING_SHRINKAGE = 4.0
# The covariance is estimated on at most this many catalogue products (bounded time on big catalogues).
WHITENING_SAMPLE = 5000


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def whitening(catalogue_features: np.ndarray, shrinkage: float = WHITENING_SHRINKAGE, seed: int = 0
              ) -> tuple[np.ndarray, np.ndarray]:
    """``(mu (d,), transform (d, k))``: ``(norm(x) - mu) @ transform`` are shrunk-whitened coordinates.

    The coordinates are those of the catalogue's principal directions (``k`` of them, at
    most the number of products used), each divided by ``sqrt(lambda + a)``; what lies
    outside the catalogue's span is dropped (no catalogue photo varies there).
    """
    catalogue = _normalise(catalogue_features)
    centre = catalogue.mean(axis=0)
    if len(catalogue) > WHITENING_SAMPLE:
        catalogue = catalogue[np.random.default_rng(seed).choice(len(catalogue), WHITENING_SAMPLE, replace=False)]
    centred = (catalogue - centre).astype(np.float64)
    _, singular, directions = np.linalg.svd(centred, full_matrices=False)
    keep = singular > singular.max() * 1e-6 if len(singular) else singular > 0
    variances, directions = singular[keep] ** 2 / len(centred), directions[keep]
    if len(variances) == 0:  # every product identical: nothing to whiten
        return centre.astype(np.float32), np.eye(catalogue.shape[1], dtype=np.float32)
    scale = 1.0 / np.sqrt(variances + shrinkage * variances.mean())
    return centre.astype(np.float32), (directions.T * scale).astype(np.float32)


def adapt_to_catalogue(prototypes: np.ndarray, catalogue_features: np.ndarray,
                       iterations: int = REFINE_ITERATIONS, sharpness: float = REFINE_SHARPNESS,
                       anchor: float = REFINE_ANCHOR, shrinkage: float | None = WHITENING_SHRINKAGE
                       ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``(centre, transform, adapted prototypes)`` (see the module docstring); no labels are used.

    ``transform`` is the whitening (``None`` with ``shrinkage=None``: centring only);
    the adapted prototypes live in the transformed space.
    """
    if len(catalogue_features) == 0:
        return np.zeros(prototypes.shape[1], np.float32), None, _normalise(prototypes)
    catalogue = _normalise(catalogue_features)
    if shrinkage is None:
        centre, transform = catalogue.mean(axis=0), None
    else:
        centre, transform = whitening(catalogue, shrinkage)

    def mapped(vectors):
        vectors = _normalise(vectors) - centre
        return _normalise(vectors if transform is None else vectors @ transform)

    catalogue, start = mapped(catalogue), mapped(prototypes)
    adapted = start
    for _ in range(iterations):
        scores = sharpness * (catalogue @ adapted.T)
        weights = np.exp(scores - scores.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        pulled = _normalise(weights.T @ catalogue)
        # Categories that attract no product keep their reference prototype.
        pulled = np.where(weights.sum(axis=0)[:, None] > 1e-6, pulled, start)
        adapted = _normalise(anchor * start + (1.0 - anchor) * pulled)
    return centre.astype(np.float32), transform, adapted.astype(np.float32)


def reference_prototypes(embedder: Embedder, reference_dir: str | Path, augmented_views: int = 2, seed: int = 0
                         ) -> tuple[list[str], np.ndarray, list[ingest.Rejected]]:
    """``(categories, prototypes (n_categories, dim), rejected)`` from a folder of category folders.

    ``reference_dir`` may also be a zip of category folders, or a list of such
    folders and zips.

    Besides each reference (flip-averaged), ``augmented_views`` random crops of it
    are averaged into the prototype: one packshot then stands for the product
    framed the ways shelf photos frame it.
    """
    paths = [reference_dir] if isinstance(reference_dir, (str, Path)) else list(reference_dir)
    items = [item for item in ingest.collect_items(paths) if not item.skip_reason]
    rejected, sources, labels = [], [], []
    for item in items:
        if not item.label:
            rejected.append(ingest.Rejected(item.name, "reference photos must be inside a category folder"))
            continue
        try:
            sources.append(item.read())
            labels.append(item.label)
        except Exception as error:  # unreadable reference: report and go on
            rejected.append(ingest.Rejected(item.name, str(error)))
    if not sources:
        raise TrainingError(f"no usable reference photos in {reference_dir} (expected one folder per category)")
    vectors, failures = embedder.embed_sources(sources)
    views = [embedder.embed_sources([(source, seed + 7919 * view + index) for index, source in enumerate(sources)],
                                    loader=embedder.load_view_pixels, flip_tta=False)[0]
             for view in range(augmented_views)]
    for index, reason in failures:
        rejected.append(ingest.Rejected(f"reference {index}", reason))
    normalise = lambda v: v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)  # noqa: E731
    per_photo = normalise(sum([normalise(vectors)] + [normalise(view) for view in views]))
    categories = sorted({label for index, label in enumerate(labels) if np.isfinite(per_photo[index]).all()})
    prototypes = np.stack([normalise(per_photo[[i for i, label in enumerate(labels)
                                                if label == category and np.isfinite(per_photo[i]).all()]]).mean(0)
                           for category in categories])
    return categories, normalise(prototypes).astype(np.float32), rejected


def prototype_head(categories: list[str], prototypes: np.ndarray, temperature: float = DEFAULT_TEMPERATURE,
                   centre: np.ndarray | None = None, transform: np.ndarray | None = None) -> HeadClassifier:
    import keras
    from keras import layers

    inputs = keras.Input(shape=(prototypes.shape[1] if transform is None else transform.shape[0],), name="embedding")
    x = layers.UnitNormalization(name="l2_normalize")(inputs)
    if centre is not None:
        x = layers.Normalization(mean=centre, variance=np.ones_like(centre), name="centre")(x)
    if transform is not None:
        whiten = layers.Dense(transform.shape[1], use_bias=False, name="whiten")
        x = whiten(x)
        whiten.set_weights([transform.astype(np.float32)])
    if centre is not None or transform is not None:
        x = layers.UnitNormalization(name="l2_normalize_centred")(x)
    outputs = layers.Dense(len(categories), use_bias=False, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="productlens_prototypes")
    model.get_layer("predictions").set_weights([(prototypes.T * temperature).astype(np.float32)])
    head = HeadClassifier()
    head.model_ = model
    head.classes_ = np.array(categories, dtype=object)
    head.metrics_ = {"accuracy": None, "n": 0, "per_class": {}, "confusion_matrix": [], "classes": categories}
    return head


def cold_start(catalog: Catalog, embedder: Embedder, reference_dir: str | Path,
               temperature: float = DEFAULT_TEMPERATURE, activate: bool = True, adapt: bool = True
               ) -> tuple[ModelVersion, list]:
    """Build the prototype classifier from ``reference_dir`` and store it as a model version.

    With ``adapt`` the prototypes are adapted to the catalogue's embedded
    products (:func:`adapt_to_catalogue`); embed the catalogue first.
    """
    categories, prototypes, rejected = reference_prototypes(embedder, reference_dir)
    if len(categories) < 2:
        raise TrainingError("cold start needs reference photos for at least 2 categories")
    centre = transform = None
    if adapt:
        centre, transform, prototypes = adapt_to_catalogue(prototypes, catalog.embeddings(embedder.key)[1])
    head = prototype_head(categories, prototypes, temperature, centre, transform)
    relative = f"models/prototypes-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.keras"
    head.save(catalog.workspace / relative)
    params = {"kind": "prototypes", "embedder": asdict(EmbedderSettings.of(embedder)),
              "temperature": temperature, "references": str(reference_dir), "adapted": bool(adapt)}
    metrics = dict(head.metrics_, n_train=int(len(categories)), train_seconds=0.0, best_epoch=0)
    version_id = catalog.add_model_version(embedder.key, categories, metrics, params, relative, activate=activate)
    return catalog.model_version(version_id), rejected
