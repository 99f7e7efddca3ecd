"""Label efficiency: how many labels each review-queue strategy needs on grocery train -> val.

Simulates a merchandiser who labels a batch of 40 products at a time (about three
Review pages; a strategy's label count is only as fine as the batch), chosen by
the queue from the unlabelled grocery train photos, retrains the head (default
settings, augmented views included) after every batch, until 1,000 labels. Val
accuracy is recorded after each retrain. As in the app, an unlabelled product
near-identical to a labelled one (cosine at least the propagation threshold, and
no labelled product of another category nearly as close) trains with its label
(never validated on); rows say which runs do. Every strategy runs
with several seeds (random's shuffle; the queue's typicality sample) and the
median curve is reported, with the spread of the seeds' label counts; the README
table gives 95% intervals over the val photos.
Writes ``benchmarks/results/label_efficiency.json``; ``benchmarks/report.py``
draws the figure and the README table from it.

    python benchmarks/label_efficiency.py [--batch 40] [--seeds 3] [--budget 1000]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from _grocery import grocery_features
from _results import write_result


def propagate(train, labelled: np.ndarray, threshold: float | None):
    """Rows and labels that train besides the labelled ones, as ``train_version`` makes them (same rule:
    :func:`core.model.training.propagation_sources`)."""
    from core.model.training import propagation_sources

    rows = np.flatnonzero(labelled)
    if threshold is None:
        return rows, train.labels[rows], np.full(len(rows), -1)
    pool = np.flatnonzero(~labelled)
    sources, keep = propagation_sources(train.features[pool], train.features[rows], train.labels[rows], threshold)
    sources = sources[keep]
    return (np.concatenate([rows, pool[keep]]), np.concatenate([train.labels[rows], train.labels[rows][sources]]),
            np.concatenate([np.full(len(rows), -1), sources]))


def simulate(train, val, strategy: str, batch: int, budget: int, seed: int,
             propagation: float | None = None, reach: bool = False) -> list[tuple[int, float]]:
    from core.curation import active_learning
    from core.model.head import HeadClassifier

    labelled = np.zeros(len(train.ids), dtype=bool)
    curve, probabilities = [], None
    reach_similarity = active_learning.COVERAGE_SIMILARITY if reach else None
    while labelled.sum() < budget:
        pool = np.flatnonzero(~labelled)
        size = int(min(batch, budget - labelled.sum()))
        pool_probabilities = None if probabilities is None else probabilities[pool]
        chosen = active_learning.select_batch(pool_probabilities, train.features[pool], size, strategy=strategy,
                                              seed=seed + int(labelled.sum()),
                                              labelled_features=train.features[labelled],
                                              coverage_similarity=reach_similarity)
        labelled[pool[chosen]] = True
        rows, labels, propagated_from = propagate(train, labelled, propagation)
        if len(set(labels)) < 2:
            curve.append((int(labelled.sum()), 0.0))
            continue
        # Every embedded product has its views (made with its photo on import): propagated ones train with
        # theirs, as in train_version.
        head = HeadClassifier(random_state=seed).fit(train.features[rows], labels,
                                                     augmented_views=[view[rows] for view in train.views],
                                                     propagated_from=propagated_from)
        accuracy = float(np.mean(head.predict(val.features) == val.labels))
        curve.append((int(labelled.sum()), accuracy))
        # The queue sees the head's probabilities over every class, as the app's queue sees its predictions.
        probabilities = head.predict_proba(train.features)
        print(f"  {strategy} seed {seed} propagation {propagation}: {labelled.sum()} labels -> {accuracy:.3f}",
              flush=True)
    return curve


def labels_to_reach(curve, target: float) -> int | None:
    return next((count for count, accuracy in curve if accuracy >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--strategies", nargs="+", default=["hybrid", "margin", "entropy"])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()

    from core.model.training import DEFAULT_PROPAGATION_THRESHOLD as THRESHOLD

    data = grocery_features()
    started = time.perf_counter()

    seeds = args.seeds
    runs: dict[str, list[list[tuple[int, float]]]] = {}

    def run(name, strategy, propagation, reach=False):
        runs[name] = [simulate(data.train, data.val, strategy, args.batch, args.budget, seed, propagation, reach)
                      for seed in range(seeds)]
        print(f"{name}: done ({time.perf_counter() - started:.0f} s)", flush=True)

    run("random", "random", None)
    run("random + near-duplicate propagation", "random", THRESHOLD)
    run("hybrid + near-duplicate propagation (default)", "hybrid", THRESHOLD)
    run("hybrid + propagation, queue with the reach term (the default in stop 19)", "hybrid", THRESHOLD, reach=True)
    run("hybrid alone (the default until stop 18)", "hybrid", None)
    for strategy in args.strategies:
        if strategy != "hybrid":
            run(f"{strategy} + diversity guard", strategy, None)
    counts = [count for count, _ in runs["random"][0]]
    curves = {name: list(zip(counts, np.median([[a for _, a in c] for c in curves], axis=0).tolist()))
              for name, curves in runs.items()}
    random_median = curves["random"]
    target = random_median[-1][1]
    reach = {name: labels_to_reach(curve, target) for name, curve in curves.items()}
    # Each seed's own count (None: not reached within the budget), to show how much the median can move.
    reach_by_seed = {name: [labels_to_reach(curve, target) for curve in curves_of_seeds]
                     for name, curves_of_seeds in runs.items()}

    for name, count in reach.items():
        print(f"{name}: reaches {target:.1%} (random's accuracy at {counts[-1]} labels) with "
              f"{count if count is not None else 'more than ' + str(counts[-1])} labels; "
              f"at {counts[-1]}: {curves[name][-1][1]:.1%}")
    result = {"batch": args.batch, "budget": args.budget, "val_photos": int(len(data.val.labels)),
              "seeds": seeds, "target_accuracy": round(target, 4), "labels_to_reach": reach,
              "labels_to_reach_by_seed": reach_by_seed,
              "propagation_threshold": THRESHOLD, "val_photos_for_interval": int(len(data.val.labels)),
              "curves": {name: [[c, round(a, 4)] for c, a in curve] for name, curve in curves.items()},
              "seconds": round(time.perf_counter() - started, 1)}
    write_result("label_efficiency", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
