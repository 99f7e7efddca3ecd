"""The whole loop on two labelled folder trees, in a throw-away workspace.

``evaluate(train_dir, test_dir)`` imports both trees (label = immediate parent
folder name), embeds every photo, trains the head on the training tree only,
predicts the test tree and returns the numbers a benchmark needs: accuracy (at
every level of the category tree the training folders form, coarse levels rolled
up from the model's probabilities), coverage against accuracy of the "Fruit › ?"
fallback, sizes, timings and peak memory. Nothing touches the user's workspace.
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from core._internal.memory import peak_rss_mb
from core.errors import InvalidInputError
from core.features.embeddings import Embedder, embed_catalog
from core.model.head import HeadClassifier
from core.model.hierarchy import DEFAULT_THRESHOLD, Taxonomy, accuracy_by_level, coverage_curve
from core.model.training import train_version
from core.storage import ingest
from core.storage.catalog import Catalog

ProgressCallback = Callable[[str, int, int], None]
COVERAGE_THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9)


def evaluate(train_dir: str | Path, test_dir: str | Path, embedder: Embedder | None = None,
             head: HeadClassifier | None = None, predictions_csv: str | Path | None = None,
             workspace: str | Path | None = None, progress: ProgressCallback | None = None,
             augmented_views: int | None = None) -> dict:
    embedder = embedder or Embedder()
    augmented_views = embedder.views if augmented_views is None else augmented_views
    head = head or HeadClassifier()
    for path in (train_dir, test_dir):
        if not Path(path).is_dir():
            raise InvalidInputError(f"{path} is not a folder")

    def stage(name):
        return (lambda done, total, _message: progress(name, done, total)) if progress else None

    with tempfile.TemporaryDirectory(prefix="productlens-evaluate-") as temporary:
        catalog = Catalog(workspace or temporary, database=None if workspace else "sqlite")
        train_report = ingest.import_paths(catalog, [train_dir], progress=stage("import train"))
        # Test labels stay out of the catalogue so they can never leak into training.
        test_report = ingest.import_paths(catalog, [test_dir], progress=stage("import test"), apply_labels=False)
        test_ids = list(dict.fromkeys(test_report.product_ids))

        # Embeds each photo with its views; train_version adds any views beyond the embedder's.
        embed_report = embed_catalog(catalog, embedder, progress=stage("embed"))
        version = train_version(catalog, embedder, head, product_ids=train_report.product_ids,
                                progress=stage("train"), augmented_views=augmented_views)
        train_seconds = version.metrics["train_seconds"]

        ids, features = catalog.embeddings(version.prediction_key, test_ids)
        probabilities = head.predict_proba(features)
        classes = list(head.classes_)
        predicted = np.array([classes[i] for i in probabilities.argmax(axis=1)], dtype=object)
        confidence = probabilities.max(axis=1) if len(probabilities) else np.zeros(0)
        truth = np.array([test_report.found_labels.get(int(pid)) for pid in ids], dtype=object)
        n_train = version.metrics["n_train"]
        # The tree comes from the training folders only (test labels never enter the catalogue).
        taxonomy = Taxonomy(catalog.category_parents())
        known = [label is not None for label in truth]
        levels = accuracy_by_level(taxonomy, list(truth[known]), probabilities[known], classes) if taxonomy else []
        coverage = coverage_curve(taxonomy, list(truth[known]), probabilities[known], classes,
                                  COVERAGE_THRESHOLDS) if taxonomy else []
        fallback = taxonomy.fallback(probabilities, classes, DEFAULT_THRESHOLD) if taxonomy else list(predicted)
        if predictions_csv:
            with open(predictions_csv, "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["path", "true_label", "predicted_label", "confidence", "answer"])
                for pid, true, guess, probability, answer in zip(ids, truth, predicted, confidence, fallback):
                    writer.writerow([test_report.names[int(pid)], true, guess, f"{probability:.6f}", answer])
        catalog.close()
        return {
            "accuracy": float(np.mean(predicted == truth)) if len(truth) else None,
            "levels": levels,
            "coverage": coverage,
            "n_train": int(n_train),
            "n_test": int(len(truth)),
            "n_classes": int(len(version.classes)),
            "backbone": embedder.backbone,
            "embedding": embedder.key,
            "augmented_views": augmented_views,
            "embed_seconds": round(embed_report.seconds, 2),
            "train_seconds": round(train_seconds, 2),
            "images_per_second": round(embed_report.images_per_second, 2),
            "rejected": len(train_report.rejected) + len(test_report.rejected),
            "peak_memory_mb": round(peak_rss_mb(), 1),
        }
