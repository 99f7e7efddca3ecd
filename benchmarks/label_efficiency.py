"""Label efficiency: how many labels each review-queue strategy needs on grocery train -> val.

Simulates a merchandiser who labels a batch of 81 products at a time, chosen by
the queue from the unlabelled grocery train photos, retrains the head (default
settings, augmented views included) after every batch, until 1,000 labels.
Val accuracy is recorded after each retrain. ``random`` is repeated over several
seeds (median reported); the active-learning strategies are deterministic.
Writes ``benchmarks/results/label_efficiency.json``; ``benchmarks/report.py``
draws the figure and the README table from it.

    python benchmarks/label_efficiency.py [--batch 81] [--budget 1000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from _grocery import grocery_features
from _results import write_result


def simulate(train, val, strategy: str, batch: int, budget: int, seed: int) -> list[tuple[int, float]]:
    from core.curation import active_learning
    from core.model.head import HeadClassifier

    labelled = np.zeros(len(train.ids), dtype=bool)
    curve, probabilities = [], None
    while labelled.sum() < budget:
        pool = np.flatnonzero(~labelled)
        size = int(min(batch, budget - labelled.sum()))
        pool_probabilities = None if probabilities is None else probabilities[pool]
        chosen = active_learning.select_batch(pool_probabilities, train.features[pool], size, strategy=strategy,
                                              seed=seed + int(labelled.sum()),
                                              labelled_features=train.features[labelled])
        labelled[pool[chosen]] = True
        rows = np.flatnonzero(labelled)
        if len(set(train.labels[rows])) < 2:
            curve.append((int(labelled.sum()), 0.0))
            continue
        head = HeadClassifier(random_state=seed).fit(train.features[rows], train.labels[rows],
                                                     augmented_views=[view[rows] for view in train.views])
        accuracy = float(np.mean(head.predict(val.features) == val.labels))
        curve.append((int(labelled.sum()), accuracy))
        # The queue sees the head's probabilities over every class, as the app's queue sees its predictions.
        probabilities = head.predict_proba(train.features)
        print(f"  {strategy} seed {seed}: {labelled.sum()} labels -> {accuracy:.3f}", flush=True)
    return curve


def labels_to_reach(curve, target: float) -> int | None:
    return next((count for count, accuracy in curve if accuracy >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=81)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--strategies", nargs="+", default=["hybrid", "margin", "entropy"])
    parser.add_argument("--random-seeds", type=int, default=3)
    args = parser.parse_args()

    data = grocery_features()
    started = time.perf_counter()
    random_curves = [simulate(data.train, data.val, "random", args.batch, args.budget, seed)
                     for seed in range(args.random_seeds)]
    counts = [count for count, _ in random_curves[0]]
    random_median = list(zip(counts, np.median([[a for _, a in c] for c in random_curves], axis=0).tolist()))
    curves = {"random (median of %d seeds)" % args.random_seeds: random_median}
    for strategy in args.strategies:
        name = "hybrid (default)" if strategy == "hybrid" else f"{strategy} + diversity guard"
        curves[name] = simulate(data.train, data.val, strategy, args.batch, args.budget, 0)
    target = random_median[-1][1]
    reach = {name: labels_to_reach(curve, target) for name, curve in curves.items()}

    for name, count in reach.items():
        print(f"{name}: reaches {target:.1%} (random's accuracy at {counts[-1]} labels) with "
              f"{count if count is not None else 'more than ' + str(counts[-1])} labels; "
              f"at {counts[-1]}: {curves[name][-1][1]:.1%}")
    result = {"batch": args.batch, "budget": args.budget, "val_photos": int(len(data.val.labels)),
              "target_accuracy": round(target, 4), "labels_to_reach": reach,
              "curves": {name: [[c, round(a, 4)] for c, a in curve] for name, curve in curves.items()},
              "seconds": round(time.perf_counter() - started, 1)}
    write_result("label_efficiency", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
