"""Accuracy ablation on grocery train -> val, from cached features: what each lever is worth.

Uses the embedded grocery workspace (``_grocery.py``; default embedder:
EfficientNet-Lite0 at 288 px, flip TTA, 2 augmented crop views per train photo)
and trains heads on it, one row per lever, each measured once in this run.
With ``--lite2`` it also embeds the dataset with EfficientNet-Lite2 (cached in the
same workspace, ~25 minutes the first time) and adds Lite2 and Lite0+Lite2 rows.
Prints a Markdown table and one JSON object on the last line.

    python benchmarks/ablation.py [--lite2]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from _grocery import grocery_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lite2", action="store_true")
    args = parser.parse_args()

    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from core.embeddings import Embedder
    from core.head import HeadClassifier

    data = grocery_features()
    train, val, coarse = data.train, data.val, data.coarse
    rows = []

    def record(name, fit, features=None, val_features=None, views=None):
        features = train.features if features is None else features
        val_features = val.features if val_features is None else val_features
        views = train.views if views is None else views
        started = time.perf_counter()
        predict = fit(features, views)
        seconds = time.perf_counter() - started
        predicted = np.asarray(predict(val_features), dtype=object)
        fine = float(np.mean(predicted == val.labels))
        coarse_accuracy = float(np.mean([coarse[p] == coarse[t] for p, t in zip(predicted, val.labels)]))
        rows.append({"lever": name, "fine": round(fine, 4), "coarse": round(coarse_accuracy, 4),
                     "train_seconds": round(seconds, 2)})
        print(f"{name:<70} fine {fine:6.1%}  coarse {coarse_accuracy:6.1%}  {seconds:6.2f} s", flush=True)

    def head(**settings):
        def fit(features, views):
            model = HeadClassifier(**settings).fit(features, train.labels, augmented_views=views)
            return model.predict
        return fit

    record("default: closed-form linear head (ridge, l2 0.1), 2 crop views, refit", head())
    record("  without the augmented crop views", head(), views=[])
    record("  with 1 crop view", head(), views=train.views[:1])
    record("  l2 0.01 instead of 0.1", head(l2=0.01))
    record("  l2 1.0 instead of 0.1", head(l2=1.0))
    record("  no class weighting", head(class_weight=None))
    record("  no refit on all products after validation", head(refit_full=False))
    record("  AdamW head, 200 epochs, early stopping (previous default)", head(solver="adamw"))
    record("  AdamW MLP head (1,024 hidden units, dropout 0.5)", head(hidden_units=1024))

    def lda(features, views):
        stacked = np.concatenate([features] + list(views))
        model = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.1).fit(
            stacked, np.tile(train.labels, 1 + len(views)))
        return model.predict

    record("  shrinkage LDA (scikit-learn, shrinkage 0.1) instead of ridge", lda)

    # Multi-crop test-time augmentation: average the head's probabilities over the photo and
    # the same kind of random crops the training views use (embedded once, cached per val photo).
    from core.embeddings import embed_catalog

    crops = []
    for view in range(4):
        embed_catalog(data.catalog, data.embedder, product_ids=val.ids.tolist(), view=view)
        crop_ids, crop_features = data.catalog.embeddings(data.embedder.view_key(view), val.ids.tolist())
        if np.array_equal(crop_ids, val.ids):
            crops.append(crop_features)
    for count in (2, 4):
        def fit_tta(features, views, count=count):
            model = HeadClassifier().fit(features, train.labels, augmented_views=views)

            def predict(val_features):
                probabilities = model.predict_proba(val_features)
                for crop in crops[:count]:
                    probabilities = probabilities + model.predict_proba(crop)
                return model.classes_[probabilities.argmax(axis=1)]
            return predict

        record(f"  + test-time average over {count} random crops of each val photo", fit_tta)

    if args.lite2:
        lite2 = Embedder(backbone="efficientnet_lite2")
        other = grocery_features(embedder=lite2)
        if not (np.array_equal(other.train.ids, train.ids) and np.array_equal(other.val.ids, val.ids)):
            raise SystemExit("Lite0 and Lite2 feature sets cover different photos")
        record(f"EfficientNet-Lite2 ({lite2.image_size} px, flip, 2 crop views), default head", head(),
               other.train.features, other.val.features, other.train.views)
        record("Lite0 + Lite2 features concatenated, default head", head(),
               np.concatenate([train.features, other.train.features], axis=1),
               np.concatenate([val.features, other.val.features], axis=1),
               [np.concatenate([a, b], axis=1) for a, b in zip(train.views, other.train.views)])
        other_crops = []
        for view in range(4):
            embed_catalog(other.catalog, lite2, product_ids=val.ids.tolist(), view=view)
            other_crops.append(other.catalog.embeddings(lite2.view_key(view), val.ids.tolist())[1])

        def fit_both_tta(features, views):
            model = HeadClassifier().fit(features, train.labels, augmented_views=views)

            def predict(val_features):
                probabilities = model.predict_proba(val_features)
                for crop, other_crop in zip(crops, other_crops):
                    probabilities = probabilities + model.predict_proba(np.concatenate([crop, other_crop], axis=1))
                return model.classes_[probabilities.argmax(axis=1)]
            return predict

        record("Lite0 + Lite2 concatenated + test-time average over 4 random crops", fit_both_tta,
               np.concatenate([train.features, other.train.features], axis=1),
               np.concatenate([val.features, other.val.features], axis=1),
               [np.concatenate([a, b], axis=1) for a, b in zip(train.views, other.train.views)])

    print("\n| lever | fine | coarse | training s |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['lever'].strip()} | {row['fine']:.1%} | {row['coarse']:.1%} | {row['train_seconds']:.2f} |")
    print(json.dumps({"rows": rows, "train": int(len(train.ids)), "val": int(len(val.ids))}))


if __name__ == "__main__":
    main()
