"""Seconds a user waits for the cached-embedding steps: retrain, predict, map.

On the grocery features (``_grocery.py`` cache), in one run:

- **retrain**: the default head on the 2,640 labelled train products (with their
  augmented views), through ``train_version`` (read + fit + save + record), in a
  process where Keras is already loaded: the first retrain after an import (no
  cached view scatter), a retrain with unchanged labels, and, the case a user
  waits for, a retrain after correcting the labels of 10 random products (into
  random other categories; medians of 5);
- **predict 10,000**: ``predict_catalog`` on a catalogue of 10,000 embedded
  products (grocery vectors repeated with a little noise; tiny distinct photos),
  top-5 stored in SQLite, median of 3;
- **UMAP of 5,000 products**: :func:`core.curation.projection.project`, warm (second call
  in this process, median of 3) and in a fresh process (numba's compiled
  kernels come from the persisted cache, not recompiled).

Writes ``benchmarks/results/speed.json``.

    python benchmarks/speed.py
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image
from throughput import timed

from _grocery import REPO, grocery_features
from _results import write_result


def median_seconds(function, repeats: int = 3) -> float:
    return round(timed(function, repeats), 3)


def main() -> None:
    from core.curation.projection import project
    from core.features.embeddings import Embedder
    from core.model.head import HeadClassifier
    from core.model.prediction import predict_catalog
    from core.model.training import train_version
    from core.storage.catalog import Catalog

    data = grocery_features()
    results = {}

    catalog, embedder = data.catalog, data.embedder
    train_ids = data.train.ids.tolist()
    with tempfile.TemporaryDirectory() as scratch:  # load Keras and trace the head once
        HeadClassifier().fit(data.train.features[:200], data.train.labels[:200]).save(f"{scratch}/warm.keras")
    for stale in (catalog.workspace / "cache").glob("view-scatter-*"):
        stale.unlink()
    versions = []

    def retrain():
        versions.append(train_version(catalog, embedder, product_ids=train_ids, activate=False))

    results["retrain_2640_first_seconds"] = median_seconds(retrain, repeats=1)
    results["retrain_2640_unchanged_seconds"] = median_seconds(retrain, repeats=5)
    labels = catalog.current_labels()
    categories = sorted(set(labels[pid] for pid in train_ids))
    rng = np.random.default_rng(0)
    corrected_seconds, products_read = [], []
    try:
        for _ in range(5):
            chosen = rng.choice(train_ids, 10, replace=False)
            catalog.set_labels([(int(pid), categories[(categories.index(labels[int(pid)]) + 1 + int(rng.integers(
                len(categories) - 1))) % len(categories)]) for pid in chosen])
            corrected_seconds.append(median_seconds(retrain, repeats=1))
            products_read.append(versions[-1].metrics["view_scatter_products_read"])
    finally:
        catalog.set_labels([(pid, labels[pid]) for pid in train_ids if catalog.current_label(pid) != labels[pid]])
    results["retrain_2640_after_10_corrections_seconds"] = float(np.median(corrected_seconds))
    results["retrain_after_corrections_products_read"] = products_read
    results["retrain_head_fit_seconds"] = versions[-1].metrics["train_seconds"]
    print(f"retrain on {len(train_ids)} products (4 views each): first after import "
          f"{results['retrain_2640_first_seconds']} s, labels unchanged {results['retrain_2640_unchanged_seconds']} s, "
          f"after correcting 10 labels {results['retrain_2640_after_10_corrections_seconds']} s "
          f"(views re-read for {products_read} products)", flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        big = Catalog(scratch)
        rng = np.random.default_rng(0)
        ids = []
        for index in range(10_000):
            buffer = io.BytesIO()
            Image.new("RGB", (1, 1), (index % 256, index // 256 % 256, index // 65536)).save(buffer, "PNG")
            ids.append(big.add_image(buffer.getvalue(), f"p{index}.png", "PNG", ".png", 1, 1)[0])
        base = np.concatenate([data.train.features, data.val.features])
        vectors = base[np.arange(10_000) % len(base)] + rng.normal(0, 0.01, size=(10_000, base.shape[1]))
        key = Embedder().key
        big.store_embeddings(key, ids, vectors.astype(np.float32))
        head = HeadClassifier().fit(data.train.features, data.train.labels)
        head.save(big.workspace / "models" / "head.keras")
        version_id = big.add_model_version(key, list(head.classes_), {}, {}, "models/head.keras")
        results["predict_10000_seconds"] = median_seconds(lambda: predict_catalog(big, version_id))
        print(f"predict 10,000 cached embeddings (load head, read, predict, store top-5): "
              f"{results['predict_10000_seconds']} s", flush=True)

    features = np.concatenate([data.train.features] + data.train.views)[:5000]
    project(features[:500])  # compile / load numba kernels
    results["umap_5000_warm_seconds"] = median_seconds(lambda: project(features))
    print(f"UMAP of 5,000 products, warm process: {results['umap_5000_warm_seconds']} s", flush=True)
    with tempfile.NamedTemporaryFile(suffix=".npy") as handle:
        np.save(handle.name, features)
        code = ("import time, numpy as np; from core.curation.projection import project; "
                f"x = np.load({handle.name!r}); t = time.perf_counter(); project(x); "
                "print(time.perf_counter() - t)")
        fresh = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
        results["umap_5000_fresh_process_seconds"] = round(float(fresh.stdout.strip().splitlines()[-1]), 3)
    print(f"UMAP of 5,000 products, fresh process (numba cache on disk): "
          f"{results['umap_5000_fresh_process_seconds']} s", flush=True)
    write_result("speed", results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
