"""Open set: does "new category?" tell photos of unlabelled categories from photos of labelled ones?

Trains on part of the grocery train categories, then scores every val photo:
known (its category was trained on) or unknown. Protocols, each over several
random splits: half of the 81 fine categories (an unknown is often a sibling
variety of a known one: another apple); half of the coarse categories with all
their fine ones (an unknown is another kind of product); and the issue's case,
only the apple varieties labelled. The head is trained as the app trains it (with
the crop views) and predicts from each photo averaged with its views, as the app
does; the detector, as the app's since stop 30, learns from and judges those vectors too.
Scores: what the app flags by (:mod:`core.model.novelty`: the standard scores
of the distance to the nearest labelled category and of the head's confidence
against held-out labelled products', added), and each part alone: the Mahalanobis
distance (the app's score in stops 23-25), the head's confidence (maximum softmax
probability); and the cosine similarity to the nearest labelled product (the app's
score until stop 23); as AUROC with a bootstrap 95% interval over the val photos;
and, at the app's threshold, the share of unknown and of known val photos flagged.

    python benchmarks/open_set.py [--splits 5]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from _grocery import grocery_features
from _results import write_result


def auroc(known: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(known, score))


def nearest_similarity(labelled: np.ndarray, photos: np.ndarray) -> np.ndarray:
    """Each photo's cosine similarity to its nearest labelled product."""
    def unit(rows):
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    return (unit(photos) @ unit(labelled).T).max(axis=1)


def interval(known_sets, score_sets, resamples: int = 500, seed: int = 0) -> tuple[float, float]:
    """Bootstrap over val photos (the same draw for every split) of the mean AUROC over splits."""
    rng = np.random.default_rng(seed)
    n = len(known_sets[0])
    draws = []
    for _ in range(resamples):
        rows = rng.integers(0, n, n)
        values = [auroc(k[rows], s[rows]) for k, s in zip(known_sets, score_sets) if 0 < k[rows].mean() < 1]
        draws.append(np.mean(values))
    return float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--splits", type=int, default=5)
    args = parser.parse_args()
    from core.model.head import HeadClassifier
    from core.model.novelty import DEFAULT_QUANTILE, NoveltyDetector
    from core.model.training import held_out_confidence

    data = grocery_features()
    train, val = data.train, data.val
    prediction_key = data.embedder.prediction_key
    val_predicted = data.catalog.embeddings(prediction_key, val.ids.tolist())[1]
    train_predicted = (train.features + sum(train.views)) / (1 + len(train.views))
    coarse_train = np.array([data.coarse[label] for label in train.labels])
    coarse_val = np.array([data.coarse[label] for label in val.labels])
    fine, coarse = np.unique(train.labels), np.unique(coarse_train)
    started = time.perf_counter()

    def protocol(name, known_sets_of_categories, level_train, level_val):
        scores = {score: [] for score in ("combined", "distance", "confidence", "similarity")}
        knowns, flagged_unknown, flagged_known = [], [], []
        for categories in known_sets_of_categories:
            in_train = np.isin(level_train, list(categories))
            known = np.isin(level_val, list(categories))
            features, labels = train.features[in_train], train.labels[in_train]
            head = HeadClassifier().fit(features, labels, augmented_views=[view[in_train] for view in train.views])
            confidence = head.predict_proba(val_predicted).max(axis=1)
            # As the app: the detector learns from and judges the prediction vectors (photo + crop views).
            detector = NoveltyDetector().fit(train_predicted[in_train], labels,
                                             held_out_confidence(head, len(features)))
            combined = detector.score(val_predicted, confidence)
            knowns.append(known)
            scores["combined"].append(combined)
            scores["distance"].append(detector.distance(val_predicted))
            scores["confidence"].append(confidence)
            scores["similarity"].append(nearest_similarity(features, val.features))
            new = combined < detector.threshold_
            flagged_unknown.append(float(new[~known].mean()))
            flagged_known.append(float(new[known].mean()))
        row = {"protocol": name, "splits": len(knowns),
               "known_val_photos": int(np.mean([k.sum() for k in knowns])),
               "unknown_val_photos": int(np.mean([(~k).sum() for k in knowns]))}
        for score, values in scores.items():
            low, high = interval(knowns, values)
            row[f"auroc_{score}"] = {"value": round(float(np.mean([auroc(k, v) for k, v in zip(knowns, values)])), 4),
                                     "low": round(low, 4), "high": round(high, 4),
                                     "per_split": [round(auroc(k, v), 4) for k, v in zip(knowns, values)]}
        row["unknown_flagged"] = round(float(np.mean(flagged_unknown)), 4)
        row["known_flagged"] = round(float(np.mean(flagged_known)), 4)
        print(json.dumps(row), flush=True)
        return row

    rng = np.random.default_rng(0)
    rows = [
        protocol("half of the fine categories", [rng.choice(fine, len(fine) // 2, replace=False)
                                                 for _ in range(args.splits)], train.labels, val.labels),
        protocol("half of the coarse categories", [rng.choice(coarse, len(coarse) // 2, replace=False)
                                                   for _ in range(args.splits)], coarse_train, coarse_val),
        protocol("only the apple varieties", [["Apple"]], coarse_train, coarse_val),
    ]
    write_result("open_set", {"rows": rows, "quantile": DEFAULT_QUANTILE, "val_photos": int(len(val.labels)),
                              "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
