"""Cold start on the grocery dataset: one iconic catalogue image per class -> val accuracy.

Compares plain nearest-prototype on pooled features (224 px, no flips, no
augmented prototypes) with ProductLens's default cold start (288 px, flip TTA,
prototypes averaged over 2 random crops). No labels of the val photos are used.

    python benchmarks/coldstart.py [--dataset DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "grocery"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    args = parser.parse_args()
    from core.coldstart import prototype_head, reference_prototypes
    from core.embeddings import Embedder

    with open(args.dataset / "classes.csv") as handle:
        classes = list(csv.DictReader(handle))
    with tempfile.TemporaryDirectory() as scratch:
        references = Path(scratch)
        for row in classes:
            folder = references / row["Class Name (str)"]
            folder.mkdir()
            (folder / "iconic.jpg").symlink_to(args.dataset / row["Iconic Image Path (str)"].lstrip("/"))
        val = sorted((args.dataset / "val").rglob("*.jpg"))
        truth = np.array([path.parent.name for path in val], dtype=object)
        results = {}
        for name, embedder, views in (("plain prototypes (224 px, no flip, no crops)",
                                       Embedder(image_size=224, flip_tta=False), 0),
                                      ("ProductLens default (288 px, flip, 2 crop views)", Embedder(), 2)):
            categories, prototypes, _ = reference_prototypes(embedder, references, augmented_views=views)
            features, _ = embedder.embed_sources(val)
            predicted = prototype_head(categories, prototypes).predict(features)
            results[name] = float(np.mean(predicted == truth))
    for name, accuracy in results.items():
        print(f"{name}: {accuracy:.1%}")
    print(json.dumps({"val_images": len(val), "reference_images": len(classes), "accuracy": results}))


if __name__ == "__main__":
    main()
