"""Label-error detection: corrupt 5% of the grocery train labels, see how many are found.

Two kinds of errors, each over 3 seeds: *random* (a fixed-seed 5% of the train
photos each get a random wrong fine label) and *whole series* (5% of the photos,
taken as whole near-duplicate groups, each group given one wrong label, as a
supplier who mislabels a series of shots does). ProductLens's suspicious-label
detection (:mod:`core.curation.suspicious`: group-aware k-fold out-of-sample
probabilities of the head, flag when the label's probability is below its
threshold) runs at its default settings on the cached embeddings and the flagged
set is compared with the corrupted set. For comparison, the same with ordinary
stratified folds, and cleanlab's confident learning (``find_label_issues``, the
rule used until stop 18) on each. Writes ``benchmarks/results/label_errors.json``.

    python benchmarks/label_errors.py [--fraction 0.05] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from _grocery import grocery_features
from _results import write_result


def corrupt(labels: np.ndarray, features: np.ndarray, fraction: float, seed: int, series: bool):
    """``(noisy labels, corrupted row indices)``."""
    from core.curation.suspicious import near_duplicate_group_ids

    rng = np.random.default_rng(seed)
    classes = np.array(sorted(set(labels)), dtype=object)
    count = int(round(fraction * len(labels)))
    noisy = labels.copy()
    if not series:
        corrupted = rng.choice(len(labels), count, replace=False)
        for index in corrupted:
            noisy[index] = rng.choice(classes[classes != labels[index]])
        return noisy, corrupted
    groups = near_duplicate_group_ids(features)
    corrupted: list[int] = []
    for index in rng.permutation(len(labels)):
        if len(corrupted) >= count:
            break
        rows = np.flatnonzero(groups == groups[index])
        if noisy[index] != labels[index] or len(corrupted) + len(rows) > count:
            continue
        noisy[rows] = rng.choice(classes[classes != labels[index]])
        corrupted.extend(int(row) for row in rows)
    return noisy, np.array(corrupted)


def scores(flagged: set, truth: set) -> dict:
    hits = len(flagged & truth)
    return {"flagged": len(flagged), "precision": round(hits / max(1, len(flagged)), 3),
            "recall": round(hits / max(1, len(truth)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    from cleanlab.filter import find_label_issues as confident_learning

    from core.curation import suspicious

    train = grocery_features().train
    groups = suspicious.near_duplicate_group_ids(train.features)
    rows, started = [], time.perf_counter()
    for kind in ("random", "whole series"):
        for seed in range(args.seeds):
            noisy, corrupted = corrupt(train.labels, train.features, args.fraction, seed, kind == "whole series")
            truth = set(corrupted.tolist())
            for folds in ("group-aware", "stratified"):
                probabilities, classes = suspicious.out_of_sample_probabilities(
                    train.features, noisy, seed=seed, groups=groups if folds == "group-aware" else None)
                issues = suspicious.find_label_issues(noisy, probabilities, classes)
                flagged = set(issues["index"].tolist())
                suggested = issues.set_index("index")["suggested_label"]
                right = sum(suggested[i] == train.labels[i] for i in flagged & truth)
                targets = np.searchsorted(classes, noisy)
                cleanlab = set(np.flatnonzero(confident_learning(targets, probabilities, n_jobs=1)).tolist())
                rows.append({"errors": kind, "seed": seed, "folds": folds, "corrupted": len(truth),
                             **scores(flagged, truth),
                             "suggestion_correct_on_found": round(right / max(1, len(flagged & truth)), 3),
                             "cleanlab": scores(cleanlab, truth)})
                row = rows[-1]
                print(f"{kind:12s} seed {seed} {folds:11s}: flagged {row['flagged']:3d} precision "
                      f"{row['precision']:.3f} recall {row['recall']:.3f} | cleanlab precision "
                      f"{row['cleanlab']['precision']:.3f} recall {row['cleanlab']['recall']:.3f}", flush=True)
    summary = {}
    for kind in ("random", "whole series"):
        for folds in ("group-aware", "stratified"):
            chosen = [row for row in rows if row["errors"] == kind and row["folds"] == folds]
            summary[f"{kind}, {folds} folds"] = {
                "precision_min": min(row["precision"] for row in chosen),
                "precision_mean": round(float(np.mean([row["precision"] for row in chosen])), 3),
                "recall_min": min(row["recall"] for row in chosen),
                "recall_mean": round(float(np.mean([row["recall"] for row in chosen])), 3),
                "cleanlab_precision_mean": round(float(np.mean([row["cleanlab"]["precision"] for row in chosen])), 3),
                "cleanlab_recall_mean": round(float(np.mean([row["cleanlab"]["recall"] for row in chosen])), 3)}
    result = {"train_photos": int(len(train.labels)), "fraction": args.fraction, "seeds": args.seeds,
              "folds": suspicious.DEFAULT_FOLDS, "group_threshold": suspicious.DEFAULT_GROUP_THRESHOLD,
              "max_label_probability": suspicious.MAX_LABEL_PROBABILITY, "summary": summary, "runs": rows,
              "seconds": round(time.perf_counter() - started, 1)}
    write_result("label_errors", result)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
