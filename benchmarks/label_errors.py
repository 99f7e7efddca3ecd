"""Label-error detection: corrupt 5% of the grocery train labels, see how many are found.

A fixed-seed 5% of the train photos get a random wrong fine label; ProductLens's
suspicious-label detection (k-fold out-of-sample probabilities of the head +
cleanlab confident learning, :mod:`core.curation.suspicious`) runs at its default
settings on the cached embeddings, and the flagged set is compared with the
corrupted set. Prints one JSON object on the last line.

    python benchmarks/label_errors.py [--fraction 0.05] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from _grocery import grocery_features
from _results import write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fraction", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from core.curation import suspicious

    train = grocery_features().train
    rng = np.random.default_rng(args.seed)
    classes = np.array(sorted(set(train.labels)), dtype=object)
    corrupted = rng.choice(len(train.labels), int(round(args.fraction * len(train.labels))), replace=False)
    noisy = train.labels.copy()
    for index in corrupted:
        noisy[index] = rng.choice(classes[classes != train.labels[index]])
    started = time.perf_counter()
    probabilities, found_classes = suspicious.out_of_sample_probabilities(train.features, noisy, seed=args.seed)
    issues = suspicious.find_label_issues(noisy, probabilities, found_classes)
    seconds = time.perf_counter() - started
    flagged, truth = set(issues["index"].tolist()), set(corrupted.tolist())
    hits = len(flagged & truth)
    right_suggestion = sum(issues.set_index("index").loc[i, "suggested_label"] == train.labels[i]
                           for i in flagged & truth)
    result = {
        "train_photos": int(len(noisy)), "corrupted": len(truth), "flagged": len(flagged),
        "precision": round(hits / max(1, len(flagged)), 3), "recall": round(hits / len(truth), 3),
        "suggestion_correct_on_found": round(right_suggestion / max(1, hits), 3),
        "seconds": round(seconds, 1), "folds": suspicious.DEFAULT_FOLDS, "seed": args.seed,
    }
    print(f"corrupted {result['corrupted']} of {result['train_photos']} labels; flagged {result['flagged']}: "
          f"precision {result['precision']:.3f}, recall {result['recall']:.3f} "
          f"(suggested label right for {result['suggestion_correct_on_found']:.0%} of the found), "
          f"{result['seconds']} s")
    write_result("label_errors", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
