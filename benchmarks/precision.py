"""bfloat16 vs float32 embedding: same predictions? feature cosine? images/s?

On the grocery val photos (296), embeds every photo with its 4 views in float32 and
in bfloat16 (the default backbone, same crops), trains the default head on the
cached float32 train features (``_grocery.py``), and reports: the minimum and
median cosine between the two precisions' photo vectors and prediction vectors,
how many val photos get a different top-1 category, both accuracies, and both
embedding rates. It is the check behind :func:`core.settings.embedding_precision`
keeping float32 as the default (bfloat16 must not change predictions to be default).
Prints one JSON object on the last line.

    python benchmarks/precision.py
"""

from __future__ import annotations

import json
import time

import numpy as np

from _grocery import grocery_features
from _results import write_result


def main() -> None:
    from core import settings
    from core.features.embeddings import Embedder, prediction_vectors
    from core.model.head import HeadClassifier

    data = grocery_features()
    train, val, catalog = data.train, data.val, data.catalog
    head = HeadClassifier().fit(train.features, train.labels, augmented_views=train.views)
    products = {product.id: product for product in catalog.products(val.ids.tolist())}
    sources = [(catalog.image_path(products[int(pid)]), products[int(pid)].sha256) for pid in val.ids]
    results = {"photos": len(sources), "cpu_has_native_bfloat16": settings.has_native_bfloat16()}
    vectors = {}
    for precision in ("float32", "bfloat16"):
        embedder = Embedder(precision=precision)
        embedder.embed_with_views(sources[:8])  # build and trace
        started = time.perf_counter()
        photos, views, failures = embedder.embed_with_views(sources)
        seconds = time.perf_counter() - started
        if failures:
            raise SystemExit(f"failed to embed: {failures[:3]}")
        vectors[precision] = (photos, prediction_vectors(photos, views))
        predicted = head.predict(vectors[precision][1])
        results[precision] = {"photos_per_second": round(len(sources) / seconds, 2),
                              "accuracy": round(float(np.mean(predicted == val.labels)), 4)}
        results[precision + "_predictions"] = predicted
        print(f"{precision}: {results[precision]}", flush=True)

    def cosine(a, b):
        return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    for index, name in enumerate(("photo", "prediction")):
        values = cosine(vectors["float32"][index], vectors["bfloat16"][index])
        results[f"{name}_vector_cosine"] = {"min": round(float(values.min()), 5),
                                            "median": round(float(np.median(values)), 5)}
    changed = results.pop("float32_predictions") != results.pop("bfloat16_predictions")
    results["top1_changed"] = int(changed.sum())
    results["speedup"] = round(results["bfloat16"]["photos_per_second"] / results["float32"]["photos_per_second"], 2)
    print(f"top-1 changed for {results['top1_changed']} of {len(sources)} val photos; "
          f"prediction-vector cosine min {results['prediction_vector_cosine']['min']}; "
          f"bfloat16 {results['speedup']}x float32")
    write_result("precision", results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
