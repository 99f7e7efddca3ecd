"""Fine-tuning the top of the backbone vs the frozen ImageNet features, on grocery val.

Both rows go through the app's own path on the grocery workspace (train labelled,
val unlabelled in the same catalogue): ``train_version`` for the frozen default,
``fine_tune_version`` (activations cached once, the top convolutions fine-tuned, the
catalogue's features recomputed, the same head trained) for the fine-tuned one;
neither becomes the workspace's active version. Reported per row: val fine accuracy
of the classifier (95% interval), and the features as *similar products* see them:
the category of each val photo's nearest train photo (cosine), and the seconds each
step took. The activations' first computation is reported separately: a rerun reads
them from the workspace cache.

    python benchmarks/fine_tuning.py
Writes ``benchmarks/results/fine_tuning.json``.
"""

from __future__ import annotations

import json
import time

import numpy as np

from _grocery import grocery_features
from _results import accuracy, write_result


def nearest_neighbour_accuracy(catalog, key: str, train, val) -> dict:
    train_ids, train_vectors = catalog.embeddings(key, train.ids.tolist())
    val_ids, val_vectors = catalog.embeddings(key, val.ids.tolist())
    train_labels = dict(zip(train.ids.tolist(), train.labels))
    val_labels = dict(zip(val.ids.tolist(), val.labels))

    def unit(rows):
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    nearest = np.argmax(unit(val_vectors) @ unit(train_vectors).T, axis=1)
    right = sum(train_labels[int(train_ids[n])] == val_labels[int(pid)] for pid, n in zip(val_ids, nearest))
    return accuracy(int(right), len(val_ids))


def classifier_accuracy(catalog, version, val) -> dict:
    from core.model.training import load_version

    _, head = load_version(catalog, version)
    ids, vectors = catalog.embeddings(version.prediction_key, val.ids.tolist())
    truth = dict(zip(val.ids.tolist(), val.labels))
    predicted = head.predict(vectors)
    return accuracy(int(sum(p == truth[int(pid)] for p, pid in zip(predicted, ids))), len(ids))


def main() -> None:
    from core.model.fine_tuning import FineTuner, _cache_folder, fine_tune_version
    from core.model.training import train_version

    data = grocery_features()
    catalog, embedder = data.catalog, data.embedder
    rows = []
    started = time.perf_counter()
    frozen = train_version(catalog, embedder, activate=False)
    rows.append({"name": "frozen ImageNet features + head (the default)", "key": frozen.embedding_key,
                 "classifier": classifier_accuracy(catalog, frozen, data.val),
                 "similar_products": nearest_neighbour_accuracy(catalog, frozen.embedding_key, data.train, data.val),
                 "seconds": round(time.perf_counter() - started, 1)})
    print(json.dumps(rows[-1]), flush=True)

    tuner = FineTuner()
    cache = _cache_folder(catalog, embedder)
    cached_before = len(list(cache.glob("*.npz"))) if cache.exists() else 0
    started = time.perf_counter()
    tuned = fine_tune_version(catalog, embedder, tuner, activate=False)
    metrics = tuned.metrics
    rows.append({"name": f"top convolutions fine-tuned ({tuner.epochs} epochs, learning rate "
                         f"{tuner.learning_rate:g}) + head", "key": tuned.embedding_key,
                 "classifier": classifier_accuracy(catalog, tuned, data.val),
                 "similar_products": nearest_neighbour_accuracy(catalog, tuned.embedding_key, data.train, data.val),
                 "seconds": round(time.perf_counter() - started, 1),
                 "activations_seconds": metrics["activations_seconds"],
                 "activations_cached_before": cached_before,
                 "fine_tune_seconds": metrics["fine_tune_seconds"],
                 "fine_tuned_embedding_seconds": metrics["fine_tuned_embedding_seconds"],
                 "head_seconds": metrics["train_seconds"], "fine_tune_loss": metrics["fine_tune_loss"]})
    print(json.dumps(rows[-1]), flush=True)
    write_result("fine_tuning", {"rows": rows, "train_photos": int(len(data.train.ids)),
                                 "val_photos": int(len(data.val.ids)), "fine_tuner": tuner.get_params()})


if __name__ == "__main__":
    main()
