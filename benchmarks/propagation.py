"""Near-duplicate propagation when new photos sit unlabelled in the catalogue, as in the app.

The grocery workspace holds train (labelled) and val (imported without labels),
like a catalogue where a supplier's new photos wait for review. Each row trains
a model version through ``train_version`` (the app's path) with one propagation
setting and reports val accuracy (95% interval), the hold-out accuracy the Train
page shows, how many val photos took a propagated label and how many of those were
right; and, for comparison, the hold-out accuracy without near-duplicate groups. Writes
``benchmarks/results/propagation.json``.

    python benchmarks/propagation.py
"""

from __future__ import annotations

import json
import time

import numpy as np

from _grocery import grocery_features
from _results import accuracy, write_result


def main() -> None:
    from core.model import training
    from core.model.head import HeadClassifier

    data = grocery_features()
    catalog, embedder, val = data.catalog, data.embedder, data.val
    labelled_ids, labelled_features, labelled_labels = training.labelled_embeddings(catalog, embedder.key)
    val_row = {int(pid): row for row, pid in enumerate(val.ids)}
    rows = []
    for name, threshold, margin in (("off", None, 0.0), ("cosine >= 0.85 (stop 19)", 0.85, 0.0),
                                    ("cosine >= 0.85 and a 0.05 margin (default)", 0.85,
                                     training.DEFAULT_PROPAGATION_MARGIN)):
        started = time.perf_counter()
        propagated = training.propagated_labels(catalog, embedder.key, labelled_ids, labelled_features,
                                                labelled_labels, threshold or 0.85, margin)
        head = HeadClassifier()
        version = training.train_version(catalog, embedder, head, activate=False, propagation_threshold=threshold,
                                         propagation_margin=margin)
        ids, vectors = catalog.embeddings(version.prediction_key, val.ids.tolist())
        predicted = head.predict(vectors)
        truth = val.labels[[val_row[int(pid)] for pid in ids]]
        onto_val = [(val.labels[val_row[int(pid)]], label) for pid, label in zip(*propagated[::2])
                    if int(pid) in val_row] if threshold is not None else []
        rows.append({"propagation": name, "val": accuracy(int(np.sum(predicted == truth)), len(truth)),
                     "hold_out_accuracy": round(version.metrics["accuracy"], 4),
                     "n_propagated": int(version.metrics["n_propagated"]), "val_photos_propagated": len(onto_val),
                     "val_propagated_right": int(sum(true == copied for true, copied in onto_val)),
                     "seconds": round(time.perf_counter() - started, 1)})
        print(json.dumps(rows[-1]), flush=True)
    # What the Train page said before hold-out groups: twins of training photos were held out.
    ungrouped = training.train_version(catalog, embedder, HeadClassifier(group_threshold=None), activate=False)
    write_result("propagation", {"rows": rows, "val_photos": int(len(val.labels)),
                                 "hold_out_accuracy_without_groups": round(ungrouped.metrics["accuracy"], 4)})


if __name__ == "__main__":
    main()
