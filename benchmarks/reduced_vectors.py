"""What smaller stored vectors cost: float16, 8-bit, and PCA to fewer dimensions, on grocery val.

A million products' default vectors (3,632 float32 numbers) are 14.5 GB; the catalogue
already stores float16 (7.3 GB). Each row transforms every vector the same way (PCA is
fitted on the catalogue's photo vectors, train and val, without labels, and the result
is scaled back to unit length), trains the default head on the train photos and their
crop views, and reports val fine accuracy (95% interval) from the stored prediction
vectors, the similar-products check (the category of each val photo's nearest train
photo) and the bytes per vector.

    python benchmarks/reduced_vectors.py
Writes ``benchmarks/results/reduced_vectors.json``.
"""

from __future__ import annotations

import json

import numpy as np

from _grocery import grocery_features
from _results import accuracy, write_result


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)


def main() -> None:
    from core.model.head import HeadClassifier

    data = grocery_features()
    catalog, embedder, train, val = data.catalog, data.embedder, data.train, data.val
    val_ids, val_prediction = catalog.embeddings(embedder.prediction_key, val.ids.tolist())
    truth = dict(zip(val.ids.tolist(), val.labels))
    val_truth = np.array([truth[int(pid)] for pid in val_ids], dtype=object)
    catalogue = np.concatenate([train.features, val.features])
    mean = catalogue.mean(axis=0)
    _, _, components = np.linalg.svd(catalogue - mean, full_matrices=False)

    def quantised(rows: np.ndarray) -> np.ndarray:  # per-dimension 8-bit, ranges from the catalogue
        low, high = catalogue.min(axis=0), catalogue.max(axis=0)
        steps = np.round((np.clip(rows, low, high) - low) / np.maximum(high - low, 1e-12) * 255)
        return steps / 255 * (high - low) + low

    variants = [("float32 (reference)", lambda rows: rows, 4 * catalogue.shape[1]),
                ("float16 (what the catalogue stores)", lambda rows: rows.astype(np.float16).astype(np.float32),
                 2 * catalogue.shape[1]),
                ("8-bit per dimension", quantised, catalogue.shape[1])]
    for dims in (1024, 512, 256):
        basis = components[:dims].T
        variants.append((f"PCA to {dims} dimensions, float16",
                         lambda rows, basis=basis: unit((rows - mean) @ basis).astype(np.float16).astype(np.float32),
                         2 * dims))
    rows = []
    for name, transform, size in variants:
        head = HeadClassifier().fit(transform(train.features), train.labels,
                                    augmented_views=[transform(view) for view in train.views])
        predicted = head.predict(transform(val_prediction))
        train_vectors, val_vectors = unit(transform(train.features)), unit(transform(val.features))
        nearest = np.argmax(val_vectors @ train_vectors.T, axis=1)
        rows.append({"vectors": name, "bytes_per_vector": int(size),
                     "val": accuracy(int(np.sum(predicted == val_truth)), len(val_truth)),
                     "similar_products": accuracy(int(np.sum(train.labels[nearest] == val.labels)), len(val.labels)),
                     "million_products_gb": round(size * 1e6 / 1e9, 1)})
        print(json.dumps(rows[-1]), flush=True)
    write_result("reduced_vectors", {"rows": rows, "train_photos": int(len(train.ids)),
                                     "val_photos": int(len(val_ids))})


if __name__ == "__main__":
    main()
