"""The app's multi-step jobs, each one call: import -> embed -> predict, and retrain -> predict.

Pages call these so that a button press maps to one function with one progress
callback ``progress(fraction, message)`` (0.0 to 1.0 over the whole job), which is
what a progress bar needs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

from core.errors import BackboneUnavailableError, NotFoundError
from core.features.embeddings import Embedder, EmbedReport, embed_catalog
from core.model.head import HeadClassifier
from core.model.prediction import predict_catalog
from core.model.training import embedder_for, train_version
from core.storage import ingest
from core.storage.catalog import Catalog, ModelVersion

JobProgress = Callable[[float, str], None]


@dataclass
class UploadResult:
    report: ingest.ImportReport
    embedded: EmbedReport | None = None
    predicted: int = 0
    product_ids: list[int] = field(default_factory=list)
    prediction_error: str | None = None  # why the photos were imported but not predicted (e.g. a lost model file)


def _stage(progress: JobProgress | None, start: float, end: float, label: str):
    if progress is None:
        return None

    def update(done: int, total: int, _message: str = "") -> None:
        fraction = start + (end - start) * (done / total if total else 1.0)
        progress(min(1.0, fraction), f"{label} {done}/{total}")

    return update


def import_and_predict(catalog: Catalog, files: Iterable[tuple[str, bytes]], embedder: Embedder,
                       label: str | None = None, progress: JobProgress | None = None) -> UploadResult:
    """Import uploaded ``(name, bytes)`` files, embed the new products and predict them."""
    files = list(files)
    report = ingest.ImportReport()
    for index, (name, data) in enumerate(files, start=1):
        ingest.import_bytes(catalog, name, data, label=label, report=report)
        if progress:
            progress(0.3 * index / len(files), f"importing {index}/{len(files)}")
    product_ids = list(dict.fromkeys(report.product_ids))
    result = UploadResult(report, product_ids=product_ids)
    if not product_ids:
        return result
    result.embedded = embed_catalog(catalog, embedder, product_ids=product_ids,
                                    progress=_stage(progress, 0.3, 0.95, "embedding"))
    active = catalog.active_model_version()
    try:
        if active is not None and active.embedding_key != embedder.key:
            # The active model sees through its own backbone (fine-tuned, or trained before a default
            # changed): the new photos need its features too, until a retrain on the default's.
            embed_catalog(catalog, version_embedder(catalog, active), product_ids=product_ids,
                          progress=_stage(progress, 0.95, 0.99, "features for the active model"))
        if active is not None:
            result.predicted = predict_catalog(catalog, active, product_ids=product_ids)["predicted"]
    except (NotFoundError, BackboneUnavailableError) as error:
        # The photos are in; only their predictions wait for a working model.
        result.prediction_error = str(error)
    if progress:
        progress(1.0, "done")
    return result


_VERSION_EMBEDDERS: dict[tuple[str, int], Embedder] = {}
_VERSION_EMBEDDERS_LOCK = threading.Lock()


def version_embedder(catalog: Catalog, version: ModelVersion) -> Embedder:
    """The embedder of ``version``'s features, built once per process (the newest two are kept)."""
    key = (str(catalog.workspace), version.id)
    with _VERSION_EMBEDDERS_LOCK:
        if key not in _VERSION_EMBEDDERS:
            while len(_VERSION_EMBEDDERS) >= 2:
                _VERSION_EMBEDDERS.pop(next(iter(_VERSION_EMBEDDERS)))
            _VERSION_EMBEDDERS[key] = embedder_for(version, catalog)
        return _VERSION_EMBEDDERS[key]


def retrain_and_predict(catalog: Catalog, embedder: Embedder, head: HeadClassifier | None = None,
                        augmented_views: int | None = None,
                        progress: JobProgress | None = None) -> ModelVersion:
    """Embed what is missing, train a new head version, and refresh every prediction."""
    embed_catalog(catalog, embedder, progress=_stage(progress, 0.0, 0.3, "embedding"))
    head = head or HeadClassifier()
    stage = _stage(progress, 0.3, 0.95, "training")

    def training_progress(done, total, message):
        # Views are embedded first (counted in products), then epochs: both map onto one bar.
        if stage:
            stage(done, total, message)

    version = train_version(catalog, embedder, head, progress=training_progress, augmented_views=augmented_views)
    predict_catalog(catalog, version)
    if progress:
        progress(1.0, "done")
    return version


def cold_start_and_predict(catalog: Catalog, embedder: Embedder, references, progress: JobProgress | None = None
                           ) -> tuple[ModelVersion, list]:
    """Embed the catalogue, build the prototype head from ``references`` (a folder of category folders
    or a zip of them), store it as the active version and predict every product."""
    from core.model.coldstart import cold_start

    embed_catalog(catalog, embedder, progress=_stage(progress, 0.0, 0.8, "embedding the catalogue"))
    if progress:
        progress(0.8, "embedding the reference photos")
    version, rejected = cold_start(catalog, embedder, references)
    predict_catalog(catalog, version)
    if progress:
        progress(1.0, "done")
    return version, rejected


def fine_tune_and_predict(catalog: Catalog, embedder: Embedder, tuner=None, progress: JobProgress | None = None
                          ) -> ModelVersion:
    """Fine-tune the top of ``embedder``'s backbone on the current labels (see
    :mod:`core.model.fine_tuning`), then predict every product with the new version."""
    from core.model.fine_tuning import fine_tune_version

    # fine_tune_version reports its steps by name; each gets its share of one bar.
    shares = {"activations": (0.0, 0.3), "classifier": (0.3, 0.35), "fine-tuning": (0.35, 0.6),
              "embedding": (0.6, 0.9)}

    def steps(done, total, message):
        if progress:
            start, end = shares.get(message, (0.9, 0.97))
            _stage(progress, start, end, message)(done, total)

    version = fine_tune_version(catalog, embedder, tuner, progress=steps)
    predict_catalog(catalog, version)
    if progress:
        progress(1.0, "done")
    return version


def load_demo_and_embed(catalog: Catalog, embedder: Embedder, progress: JobProgress | None = None
                        ) -> tuple[ingest.ImportReport, EmbedReport]:
    """Import the demo catalogue and compute its features now, so the first training is only training."""
    from core.storage.demo import load_demo

    if progress:
        progress(0.0, "importing the demo photos")
    report = load_demo(catalog)
    embedded = embed_catalog(catalog, embedder, product_ids=report.product_ids,
                             progress=_stage(progress, 0.1, 1.0, "computing features"))
    return report, embedded
