"""Train the classification head on the catalogue's labels and keep every version.

:func:`train_version` takes the current labels of embedded products, fits a
:class:`~core.model.head.HeadClassifier`, saves it atomically under
``workspace/models/`` and only then records it as a model version (with its
validation metrics and settings) and makes it active. A crash at any point
leaves the previous active version in place. :func:`load_version` rebuilds the
head of any stored version; :func:`activate` rolls back or forward.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from core.errors import TrainingError
from core.features.embeddings import Embedder
from core.model import novelty
from core.model.head import HeadClassifier
from core.model.hierarchy import Taxonomy, accuracy_by_level
from core.storage.catalog import Catalog, ModelVersion

ProgressCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class EmbedderSettings:
    backbone: str
    image_size: int
    crop: str
    flip_tta: bool
    weights: str | None = "imagenet"
    # Versions saved before these settings existed used average pooling and no prediction views.
    pooling: str = "avg"
    views: int = 0
    # ... and float32 arithmetic (int8 features are cached under their own key).
    precision: str = "float32"

    @classmethod
    def of(cls, embedder: Embedder) -> "EmbedderSettings":
        return cls(embedder.backbone, embedder.image_size, embedder.crop, embedder.flip_tta, embedder.weights,
                   embedder.pooling, embedder.views, embedder.precision)

    def embedder(self, **overrides) -> Embedder:
        return Embedder(**{**asdict(self), **overrides})


def labelled_embeddings(catalog: Catalog, embedding_key: str, product_ids: Sequence[int] | None = None
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(product_ids, features, labels)`` of products that have both a label and an embedding."""
    labels = catalog.current_labels()
    if product_ids is not None:
        wanted = {int(pid) for pid in product_ids}
        labels = {pid: label for pid, label in labels.items() if pid in wanted}
    ids, features = catalog.embeddings(embedding_key, list(labels))
    return ids, features, np.array([labels[int(pid)] for pid in ids], dtype=object)


# An unlabelled product this similar (cosine) to a labelled one trains with its label: near-identical
# shots of one product. Chosen with benchmarks/label_efficiency.py.
DEFAULT_PROPAGATION_THRESHOLD = 0.85
# ... and only when no labelled product of another category comes within this much of it. Similarity alone
# is not enough: on grocery, val photos (another shooting session) at >= 0.85 to a train photo share its
# category only 74% of the time (train photos of one series: 98.9%), and propagating them cost 4.4 points
# of val accuracy; with this margin 96% of the val photos it still admits are right.
DEFAULT_PROPAGATION_MARGIN = 0.05


def propagation_sources(candidates: np.ndarray, anchors: np.ndarray, anchor_labels: np.ndarray,
                        threshold: float = DEFAULT_PROPAGATION_THRESHOLD,
                        margin: float = DEFAULT_PROPAGATION_MARGIN, block: int = 2048):
    """``(source, keep)``: for each candidate row, its most similar anchor row and whether it takes that label.

    A candidate takes the label when its cosine similarity to the source is at least
    ``threshold`` and beats every anchor of another category by at least ``margin``.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"propagation threshold must be in (0, 1], got {threshold}")
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"propagation margin must be in [0, 1), got {margin}")

    def normalised(rows):
        rows = np.asarray(rows, dtype=np.float32)
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)

    anchors = normalised(anchors)
    _, codes = np.unique(np.asarray(anchor_labels, dtype=str), return_inverse=True)
    source = np.zeros(len(candidates), np.int64)
    keep = np.zeros(len(candidates), bool)
    for start in range(0, len(candidates), block):
        scores = normalised(candidates[start:start + block]) @ anchors.T
        best = scores.argmax(axis=1)
        top = scores[np.arange(len(best)), best]
        scores[codes[None, :] == codes[best][:, None]] = -np.inf  # what is left: other categories
        rival = scores.max(axis=1) if scores.shape[1] else np.full(len(best), -np.inf)
        source[start:start + block] = best
        keep[start:start + block] = (top >= threshold) & (top - rival >= margin)
    return source, keep


def propagated_labels(catalog: Catalog, embedding_key: str, ids: np.ndarray, features: np.ndarray,
                      labels: np.ndarray, threshold: float = DEFAULT_PROPAGATION_THRESHOLD,
                      margin: float = DEFAULT_PROPAGATION_MARGIN, labelled: set[int] | None = None):
    """``(ids, features, labels, sources)`` of unlabelled products that take a labelled one's label.

    See :func:`propagation_sources` for the rule; ``sources`` is the labelled
    product's row in ``ids``. ``labelled``: the ids that have a label (read from the
    catalogue when not given). Nothing is stored: these rows only train the head.
    """
    all_ids, vectors = catalog.embeddings(embedding_key)
    labelled = (set(catalog.current_labels()) if labelled is None else set(labelled)) | set(ids.tolist())
    unlabelled = np.array([pid not in labelled for pid in all_ids.tolist()], dtype=bool)
    if not unlabelled.any() or len(ids) == 0:
        return np.zeros(0, np.int64), np.zeros((0, features.shape[1]), np.float32), np.zeros(0, object), \
            np.zeros(0, np.int64)
    candidates_ids, candidates = all_ids[unlabelled], vectors[unlabelled]
    source, keep = propagation_sources(candidates, features, labels, threshold, margin)
    return candidates_ids[keep], candidates[keep], labels[source[keep]], source[keep]


def train_version(catalog: Catalog, embedder: Embedder, head: HeadClassifier | None = None,
                  product_ids: Sequence[int] | None = None, progress: ProgressCallback | None = None,
                  activate: bool = True, augmented_views: int | None = None,
                  propagation_threshold: float | None = DEFAULT_PROPAGATION_THRESHOLD,
                  propagation_margin: float = DEFAULT_PROPAGATION_MARGIN, extra_metrics: dict | None = None,
                  extra_params: dict | None = None) -> ModelVersion:
    """Fit a head on the current labels and store it as the new (active) model version.

    ``augmented_views`` (default: the embedder's ``views``) random-crop views per
    labelled product are embedded (once, then cached) and used for training. With
    the embedder's own views and the closed-form head they enter summarised (each
    product's photo-and-views mean plus the catalogue's cached view scatter, see
    :mod:`core.model.view_scatter`: one row per product); otherwise as extra rows.
    Unlabelled near-identical shots of labelled products train too (see
    :func:`propagated_labels`; ``propagation_threshold=None`` turns it off).
    ``extra_metrics`` and ``extra_params`` are stored with the version (e.g. how its
    backbone was fine-tuned).
    """
    from core.features.embeddings import embed_catalog
    from core.model.view_scatter import ViewScatter

    head = head or HeadClassifier()
    augmented_views = embedder.views if augmented_views is None else augmented_views
    summarised = augmented_views > 0 and augmented_views == embedder.views and \
        head.resolved_solver == "closed_form"
    labelled = catalog.current_labels()
    if product_ids is None and head.resolved_solver == "closed_form" and len(labelled) > STREAMED_FROM:
        started = time.perf_counter()
        ids, labels, detector = train_streamed(catalog, embedder.key, embedder.prediction_key, head, labelled,
                                               progress)
        # Reading the vectors is most of a streamed fit's time: counted in.
        metrics = {"streamed": True, "n_propagated": 0, "train_seconds": round(time.perf_counter() - started, 3)}
        return _keep_version(catalog, embedder, head, detector, ids, labels, len(labelled) - len(ids), metrics,
                             {"augmented_views": augmented_views, "views_summarised": False,
                              "propagation_threshold": None, "propagation_margin": propagation_margin,
                              "streamed": True, **(extra_params or {})}, extra_metrics, activate)
    ids, features, labels = labelled_embeddings(catalog, embedder.key, product_ids)
    skipped = len(labelled if product_ids is None else {int(p) for p in product_ids} & set(labelled)) - len(ids)
    if len(ids) == 0:
        raise TrainingError("no labelled products with embeddings: import labelled photos (a folder of "
                            "category folders) and run `embed` first")
    categories = sorted(set(labels))
    if len(categories) < 2:
        raise TrainingError(f"training needs labelled products in at least 2 categories; found "
                            f"{len(categories)} ({', '.join(categories) or 'none'})")
    propagated = propagated_labels(catalog, embedder.key, ids, features, labels, propagation_threshold,
                                   propagation_margin, labelled=set(labelled)) \
        if propagation_threshold is not None and product_ids is None else None
    rows_ids, rows_features, rows_labels, propagated_from = ids, features, labels, None
    if propagated is not None and len(propagated[0]):
        rows_ids = np.concatenate([ids, propagated[0]])
        rows_features = np.concatenate([features, propagated[1]])
        rows_labels = np.concatenate([labels, propagated[2]])
        propagated_from = np.concatenate([np.full(len(ids), -1, np.int64), propagated[3]])
    views, scatter, means = [], None, None
    if summarised:
        # Products embedded before views existed get them now (the photo is decoded once for all);
        # propagated products use the views made on import (one without counts as its photo alone).
        embed_catalog(catalog, embedder, progress=progress, product_ids=ids.tolist())
        scatter = ViewScatter(catalog, embedder, rows_ids, rows_labels)
        means = _with_fallback(catalog, embedder.prediction_key, rows_ids, rows_features)
    for view in range(0 if summarised else augmented_views):
        embed_catalog(catalog, embedder, progress=progress, product_ids=ids.tolist(), view=view)
        views.append(_with_fallback(catalog, embedder.view_key(view), rows_ids, rows_features))
    started = time.perf_counter()
    head.fit(rows_features, rows_labels, augmented_views=views, progress=progress, view_scatter=scatter,
             view_means=means, propagated_from=propagated_from)
    train_seconds = time.perf_counter() - started
    # The detector judges the vector each prediction is made from (the photo averaged with its crop
    # views): steadier than the photo's alone, and already read when predicting.
    judged = means[:len(ids)] if means is not None else _with_fallback(catalog, embedder.prediction_key, ids,
                                                                        features)
    detector = novelty.NoveltyDetector().fit(judged, labels, held_out_confidence(head, len(features)))
    metrics = {"n_propagated": int(len(rows_ids) - len(ids)), "train_seconds": round(train_seconds, 3)}
    if scatter is not None:  # how much of the cached view scatter this retrain had to redo
        metrics["view_scatter_products_read"] = scatter.recomputed_products_
    taxonomy = Taxonomy(catalog.category_parents())
    if taxonomy and len(head.validation_probabilities_):
        # Hold-out accuracy at every level of the category tree, coarse levels rolled up from the model.
        held_out_labels = np.asarray(rows_labels, dtype=object)[head.validation_rows_]
        metrics["levels"] = accuracy_by_level(taxonomy, list(held_out_labels), head.validation_probabilities_,
                                              list(head.classes_))
    params = {"augmented_views": augmented_views, "views_summarised": summarised,
              "propagation_threshold": propagation_threshold, "propagation_margin": propagation_margin,
              **(extra_params or {})}
    return _keep_version(catalog, embedder, head, detector, ids, labels, skipped, metrics, params, extra_metrics,
                         activate)


# Above this many labelled products training streams the vectors (bounded memory): no near-duplicate
# propagation (it compares every unlabelled product with every labelled one) and the crop views enter
# through the vectors predictions use (each photo averaged with its views), not their scatter.
STREAMED_FROM = 50_000
# The "new category?" detector of a streamed training learns from this many labelled products drawn at random.
_DETECTOR_SAMPLE = 10_000


def train_streamed(catalog: Catalog, embedding_key: str, prediction_key: str, head: HeadClassifier,
                   labelled: dict[int, str], progress: ProgressCallback | None = None, chunk: int = 20_000):
    """Fit ``head`` on every labelled product's ``prediction_key`` vector (else its ``embedding_key`` one),
    read ``chunk`` at a time; ``(ids, labels, novelty detector)``."""
    embedded = np.asarray(catalog.embedded_product_ids(embedding_key), dtype=np.int64)
    ids = embedded[np.isin(embedded, np.fromiter(labelled, np.int64, len(labelled)))]
    if len(ids) == 0:
        raise TrainingError("no labelled products with embeddings: run `embed` first")
    labels = np.array([labelled[int(pid)] for pid in ids], dtype=object)

    def read(chunk_ids):
        # As stored (float16): the fit converts each chunk into one reused buffer.
        found_ids, found = catalog.embeddings(prediction_key, chunk_ids.tolist(), dtype=np.float16)
        if np.array_equal(found_ids, chunk_ids):
            return found
        return _with_fallback(catalog, prediction_key, chunk_ids, catalog.embeddings(embedding_key,
                                                                                      chunk_ids.tolist())[1])

    head.fit_streamed(read, ids, labels, chunk=chunk, progress=progress)
    sample = np.sort(np.random.default_rng(0).choice(len(ids), min(len(ids), _DETECTOR_SAMPLE), replace=False))
    confidence = held_out_confidence(head, len(ids))[sample]
    judged = read(ids[sample]).astype(np.float32)  # the prediction vectors, as in train_version
    return ids, labels, novelty.NoveltyDetector().fit(judged, labels[sample], confidence)


def held_out_confidence(head: HeadClassifier, count: int) -> np.ndarray:
    """The fitted ``head``'s top probability for each of its first ``count`` rows it held out of training
    (NaN for the rest): what the "new category?" detector compares a product's confidence with."""
    confidence = np.full(count, np.nan)
    rows = np.asarray(head.validation_rows_, dtype=np.int64)
    if len(rows) and len(head.validation_probabilities_) == len(rows):
        inside = rows < count  # propagated rows come after the labelled ones
        confidence[rows[inside]] = head.validation_probabilities_.max(axis=1)[inside]
    return confidence


def _keep_version(catalog, embedder, head, detector, ids, labels, skipped, metrics, params, extra_metrics,
                  activate) -> ModelVersion:
    """Save the head and its "new category?" detector, then record them as a model version."""
    relative = f"models/head-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.keras"
    # Kept beside the head and written first, so a head file never lacks its detector.
    detector.save(novelty_path(catalog.workspace / relative))
    head.save(catalog.workspace / relative)
    metrics = {**head.metrics_, "novelty_threshold": round(detector.threshold_, 4),
               "n_train": int(len(ids)), "n_skipped_without_features": int(skipped),
               "best_epoch": head.best_epoch_, **metrics, **(extra_metrics or {})}
    # Which vectors the detector scores: versions from before stop 30 judged the photo's own ("embedding").
    params = {"embedder": asdict(EmbedderSettings.of(embedder)), "head": head.get_params(),
              "prediction_key": embedder.prediction_key, "novelty_vectors": "prediction", **params}
    version_id = catalog.add_model_version(embedder.key, list(head.classes_), metrics, params, relative,
                                           activate=activate)
    return catalog.model_version(version_id)


def _with_fallback(catalog: Catalog, key: str, ids: np.ndarray, features: np.ndarray) -> np.ndarray:
    """The vectors of ``ids`` under ``key``, row for row; a product without one (its photo unreadable now)
    keeps its row of ``features``."""
    found_ids, found = catalog.embeddings(key, ids.tolist())
    if np.array_equal(found_ids, ids):
        return found
    # The catalogue answers in id order; rows come labelled products first, then propagated ones.
    by_id = dict(zip(found_ids.tolist(), found))
    return np.stack([by_id.get(int(pid), row) for pid, row in zip(ids, features)])


def novelty_path(head_path: Path) -> Path:
    """Where a head's "new category?" detector is kept: beside it, same name."""
    return head_path.with_name(f"{head_path.stem}.novelty.npz")


def load_version(catalog: Catalog, version: ModelVersion | int | None = None) -> tuple[ModelVersion, HeadClassifier]:
    """The stored version (default: the active one) and its head."""
    if version is None:
        version = catalog.active_model_version()
        if version is None:
            raise TrainingError("no trained model yet: label some products and run `train`")
    elif isinstance(version, int):
        version = catalog.model_version(version)
    return version, HeadClassifier.load(catalog.model_path(version), version.classes)


def embedder_for(version: ModelVersion, catalog: Catalog | None = None) -> Embedder:
    """The embedder whose features ``version`` was trained on.

    A fine-tuned backbone's weights file lives in the workspace's ``models/``: with
    ``catalog`` it is always read from there, by name (a workspace that moved, restored
    from a backup elsewhere, still finds it; a doctored catalogue cannot point elsewhere).
    """
    settings = dict(version.params["embedder"])
    weights = settings.get("weights")
    if catalog is not None and weights not in (None, "imagenet"):
        settings["weights"] = str(catalog.workspace / "models" / Path(str(weights)).name)
    return EmbedderSettings(**settings).embedder()


def activate(catalog: Catalog, version_id: int) -> ModelVersion:
    version = catalog.model_version(version_id)
    catalog.model_path(version)  # refuses a version whose file is gone, before it becomes active
    catalog.activate_model_version(version_id)
    return catalog.model_version(version_id)
