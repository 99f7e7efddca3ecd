"""Backbone arithmetic: float32 vs bfloat16 vs int8 (ONNX Runtime, OpenVINO), same predictions? photos/s?

On the grocery val photos (296), embeds every photo with its 4 views in each precision
(the default backbone, same crops) and predicts with the default head: for float32 and
bfloat16 the head trained on the float32 train features (bfloat16 features share their
key: they are float32's up to rounding); for int8 the head trained on the int8 train
features (their own key, as the app does it: :mod:`core.features.quantized`), whichever
runtime embedded them (the two share the key). int8 is measured on both runtimes of the
8-bit graph. Reports per row the embedding rate, the val accuracy with its 95% interval,
how many val photos get a different top-1 category than float32, and the minimum and
median cosine to the float32 photo and prediction vectors. It is the check behind
:func:`core.settings.embedding_precision` (int8 on a CPU, bfloat16 opt-in) and
:func:`core.settings.int8_runtime` (OpenVINO where the CPU has AMX).
Prints one JSON object on the last line.

    python benchmarks/precision.py
"""

from __future__ import annotations

import json
import os
import time

import numpy as np

from _grocery import grocery_features
from _results import accuracy, write_result


def main() -> None:
    from core import settings
    from core.features.embeddings import Embedder, prediction_vectors
    from core.model.head import HeadClassifier

    float32 = grocery_features(embedder=Embedder(precision="float32"))
    int8 = grocery_features(embedder=Embedder(precision="int8"))
    heads = {}
    for name, data in (("float32", float32), ("int8", int8)):
        heads[name] = HeadClassifier().fit(data.train.features, data.train.labels, augmented_views=data.train.views)
    val, catalog = float32.val, float32.catalog
    products = {product.id: product for product in catalog.products(val.ids.tolist())}
    sources = [(catalog.image_path(products[int(pid)]), products[int(pid)].sha256) for pid in val.ids]
    default_runtime = settings.int8_runtime()
    results = {"photos": len(sources), "cpu_has_native_bfloat16": settings.has_native_bfloat16(),
               "cpu_has_amx": "amx_int8" in settings.cpu_flags(),
               "default": settings.embedding_precision(), "default_int8_runtime": default_runtime}
    rows = {"float32": ("float32", None), "bfloat16": ("bfloat16", None),
            "int8": ("int8", "onnxruntime"), "int8 OpenVINO": ("int8", "openvino")}
    vectors, predictions = {}, {}
    for row, (precision, runtime) in rows.items():
        if runtime:
            os.environ["PRODUCTLENS_INT8_RUNTIME"] = runtime
        embedder = Embedder(precision=precision)
        embedder.embed_with_views(sources[:8])  # build and trace
        started = time.perf_counter()
        photos, views, failures = embedder.embed_with_views(sources)
        seconds = time.perf_counter() - started
        if failures:
            raise SystemExit(f"failed to embed: {failures[:3]}")
        vectors[row] = (photos, prediction_vectors(photos, views))
        predictions[row] = heads["int8" if precision == "int8" else "float32"].predict(vectors[row][1])
        results[row] = {"photos_per_second": round(len(sources) / seconds, 2),
                        "accuracy": accuracy(int(np.sum(predictions[row] == val.labels)), len(val.ids)),
                        "head_trained_on": "int8" if precision == "int8" else "float32",
                        "runtime": runtime or "tensorflow"}
        print(f"{row}: {results[row]}", flush=True)
    os.environ.pop("PRODUCTLENS_INT8_RUNTIME", None)

    def cosine(a, b):
        return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    for precision in ("bfloat16", "int8", "int8 OpenVINO"):
        for index, name in enumerate(("photo", "prediction")):
            values = cosine(vectors["float32"][index], vectors[precision][index])
            results[precision][f"{name}_vector_cosine"] = {"min": round(float(values.min()), 5),
                                                           "median": round(float(np.median(values)), 5)}
        results[precision]["top1_changed"] = int(np.sum(predictions[precision] != predictions["float32"]))
        results[precision]["speedup"] = round(results[precision]["photos_per_second"]
                                              / results["float32"]["photos_per_second"], 2)
        print(f"{precision}: top-1 changed for {results[precision]['top1_changed']} of {len(sources)} val photos; "
              f"prediction-vector cosine min {results[precision]['prediction_vector_cosine']['min']}; "
              f"{results[precision]['speedup']}x float32")
    between = cosine(vectors["int8"][1], vectors["int8 OpenVINO"][1])
    results["int8 OpenVINO"]["prediction_vector_cosine_to_onnxruntime"] = {
        "min": round(float(between.min()), 5), "median": round(float(np.median(between)), 5)}
    results["int8 OpenVINO"]["top1_changed_from_onnxruntime"] = int(np.sum(predictions["int8 OpenVINO"]
                                                                           != predictions["int8"]))
    write_result("precision", results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
