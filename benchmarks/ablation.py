"""Accuracy ablation on grocery train -> val: what each lever is worth, every row from one run.

Embeds every grocery photo once per backbone (EfficientNet-Lite0 at 288 px and
Lite2 at 320 px, their resolutions in the default composite backbone) as six views
-- the photo, its mirror (a pass the default no longer makes; one row measures it) and
the 4 seeded random crops ProductLens uses -- and keeps
four pooled features per view: average and generalised-mean pooling of the last
feature map and the averages of the last two blocks' outputs
(``benchmarks/results/ablation-<backbone>.npz``; ~5 and ~8 minutes the first time on
2 cores, seconds afterwards). Then fits the default closed-form linear head (ridge,
l2 0.1, class-balanced; the solver :class:`core.model.head.HeadClassifier` uses, one fit on
all train rows: the head's hold-out fit for its metrics is not counted) once per lever
and scores val; test-time averaging scores the photo's vector averaged with
the same crops' vectors it trained on, as ``Embedder.prediction_key`` does in the
app. Writes ``benchmarks/results/ablation.json`` (accuracies with 95% Wilson
intervals; ``val/`` is the split the defaults were tuned on).

    python benchmarks/ablation.py
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from _grocery import DEFAULT_DATASET, coarse_map  # noqa: E402
from _results import accuracy, write_result  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
CROPS = 4


def pooled_features(backbone: str, image_size: int, dataset: Path = DEFAULT_DATASET) -> dict:
    """``{avg, gem, last_block, previous_block: (photos, 2 + CROPS, dim)}`` plus split/labels, cached."""
    cache = RESULTS / f"ablation-{backbone}-{image_size}.npz"
    if cache.exists():
        return dict(np.load(cache))
    import hashlib

    import keras
    import tensorflow as tf

    from core.features import backbones
    from core.features.embeddings import Embedder

    paths = sorted((dataset / "train").rglob("*.jpg")) + sorted((dataset / "val").rglob("*.jpg"))
    # The multi-pooling model's own pooled parts (before their normalisation), plus the
    # plain average of the last map: every pooling in one forward pass.
    feature_model = backbones.build_feature_model(backbone, "imagenet", image_size, pooling="multi")
    pooled = keras.Model(feature_model.input, [
        keras.layers.GlobalAveragePooling2D()(feature_model.get_layer("top_activation").output),
        *(feature_model.get_layer(name).output for name in ("gem_pool", "last_block_pool", "previous_block_pool"))])

    @tf.function(reduce_retracing=True)
    def forward(pixels):
        return pooled(tf.cast(pixels, tf.float32), training=False)

    embedder = Embedder(backbone=backbone, image_size=image_size, views=CROPS)

    def load(path):
        stacked = embedder.load_photo_and_views((path, hashlib.sha256(path.read_bytes()).hexdigest()))
        return np.concatenate([stacked[:1], stacked[:1, :, ::-1], stacked[1:]])

    names = ("avg", "gem", "last_block", "previous_block")
    store, batch, started = None, 8, time.perf_counter()
    with ThreadPoolExecutor(2) as executor:
        for start in range(0, len(paths), batch):
            pixels = np.concatenate(list(executor.map(load, paths[start:start + batch])))
            outputs = [forward(pixels[i:i + batch]) for i in range(0, len(pixels), batch)]
            for index, name in enumerate(names):
                values = np.concatenate([output[index].numpy() for output in outputs])
                values = values.reshape(-1, 2 + CROPS, values.shape[-1])
                if store is None or name not in store:
                    store = store or {}
                    store[name] = np.zeros((len(paths), 2 + CROPS, values.shape[-1]), np.float32)
                store[name][start:start + len(values)] = values
            if start % 400 == 0:
                print(f"  {backbone}: {start}/{len(paths)} photos, {time.perf_counter() - started:.0f} s",
                      file=sys.stderr, flush=True)
    store["split"] = np.array(["val" if "/val/" in str(path) else "train" for path in paths])
    store["labels"] = np.array([path.parent.name for path in paths])
    RESULTS.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **store)
    return store


def unit(values):
    return values / np.linalg.norm(values, axis=-1, keepdims=True)


def multi(features):
    """``multi`` pooling as :mod:`core.features.pooling` builds it."""
    return np.concatenate([unit(features["gem"]), unit(features["last_block"]),
                           unit(features["previous_block"])], axis=-1) / np.sqrt(3)


def main() -> None:
    import argparse

    from core.model._ridge import fit_standardised_ridge_many

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()

    coarse = coarse_map()
    lite0, lite2 = pooled_features("efficientnet_lite0", 288), pooled_features("efficientnet_lite2", 320)
    train, val = lite0["split"] == "train", lite0["split"] == "val"
    labels, val_labels = lite0["labels"][train], lite0["labels"][val]
    classes, targets = np.unique(labels, return_inverse=True)
    rows = []

    def record(name, views, crops=CROPS, test_time=True, l2=0.1, balanced=True, mirror=False):
        # The photo's own vector; with ``mirror``, averaged with its mirror image's (a pass the default dropped).
        photo = (views[:, 0] + views[:, 1]) / 2 if mirror else views[:, 0]
        started = time.perf_counter()
        mean, variance, [(weights, bias)] = fit_standardised_ridge_many(
            photo[train], targets, len(classes), l2, [np.zeros(0, np.int64)],
            [views[train, 2 + i] for i in range(crops)], balanced)
        seconds = time.perf_counter() - started
        # Test-time averaging uses the views the head trained on: "2 crop views" averages 2.
        query = (photo + views[:, 2:2 + crops].sum(axis=1)) / (1 + crops) if test_time else photo
        predicted = classes[(((query[val] - mean) / np.sqrt(variance)) @ weights + bias).argmax(axis=1)]
        fine = accuracy(int(np.sum(predicted == val_labels)), len(val_labels))
        coarse_accuracy = accuracy(sum(coarse[p] == coarse[t] for p, t in zip(predicted, val_labels)),
                                   len(val_labels))
        rows.append({"lever": name.strip().replace("**", ""), "default": name.startswith("**"),
                     "indent": name.startswith("  "), "fine": fine, "coarse": coarse_accuracy,
                     "train_seconds": round(seconds, 2)})
        print(f"{name:<78} fine {fine['value']:6.1%}  coarse {coarse_accuracy['value']:6.1%}  {seconds:5.2f} s",
              flush=True)

    both = np.concatenate([multi(lite0), multi(lite2)], axis=-1) / np.sqrt(2)
    # Warm-up at full size (scipy import, BLAS threads, first-touch memory), so the first row
    # times the fit the way every later row does.
    fit_standardised_ridge_many(both[train, 0], targets, len(classes), 0.1, [np.zeros(0, np.int64)],
                                [both[train, 2 + i] for i in range(CROPS)])
    record("**default**: Lite0 + Lite2, multi pooling, 4 crop views, crop test-time averaging", both)
    record("  default with the mirror pass (each photo averaged with its mirror image; the default until "
           "stop 28)", both, mirror=True)
    record("  default with l2 0.03 instead of 0.1", both, l2=0.03)
    record("  default with l2 0.3 instead of 0.1", both, l2=0.3)
    record("  default without class weighting", both, balanced=False)
    record("  default without crop test-time averaging", both, test_time=False)
    record("  default with 2 crop views instead of 4 (trained on and averaged at test time)", both, crops=2)
    record("  default without crop views or crop test-time averaging", both, crops=0, test_time=False)
    record("  default with average pooling instead of multi", np.concatenate([lite0["avg"], lite2["avg"]], axis=-1))
    record("Lite0 alone, multi pooling, 4 crop views, test-time averaging", multi(lite0))
    record("  Lite0 alone with average pooling", lite0["avg"])
    record("  Lite0 alone with GeM of the last map only (no block features)", lite0["gem"])
    record("  Lite0 alone, average pooling, mirror pass, 2 crop views, no test-time averaging (the first "
           "default)", lite0["avg"], crops=2, test_time=False, mirror=True)
    record("Lite2 alone, multi pooling, 4 crop views, test-time averaging", multi(lite2))
    result = {"rows": rows, "train": int(train.sum()), "val": int(val.sum())}
    write_result("ablation", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
