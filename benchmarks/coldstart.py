"""Cold start on the grocery dataset: one iconic catalogue image per class -> val accuracy.

Compares plain nearest-prototype on pooled features (224 px, no flips, no
augmented prototypes) with ProductLens's cold start (288 px, flip TTA,
prototypes averaged over 2 random crops), before and after adapting the
prototypes to the catalogue (centring + soft k-means, :mod:`core.coldstart`).
The catalogue for the adaptation is the grocery train + val photos, *unlabelled*:
no label of any train or val photo is used.

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
    from core.coldstart import adapt_to_catalogue, prototype_head, reference_prototypes
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
        plain = Embedder(image_size=224, flip_tta=False)
        categories, prototypes, _ = reference_prototypes(plain, references, augmented_views=0)
        features, _ = plain.embed_sources(val)
        results["plain prototypes (224 px, no flip, no crops)"] = float(np.mean(
            prototype_head(categories, prototypes).predict(features) == truth))
        sys.path.insert(0, str(REPO / "benchmarks"))
        from _grocery import grocery_features

        data = grocery_features(args.dataset)
        embedder = data.embedder
        categories, prototypes, _ = reference_prototypes(embedder, references)
        features = data.val.features
        truth = data.val.labels
        results["288 px, flip, 2 crop views"] = float(np.mean(
            prototype_head(categories, prototypes).predict(features) == truth))
        catalogue = np.concatenate([data.train.features, data.val.features])
        centre, adapted = adapt_to_catalogue(prototypes, catalogue, iterations=0)
        results["+ centred on the catalogue mean"] = float(np.mean(
            prototype_head(categories, adapted, centre=centre).predict(features) == truth))
        centre, adapted = adapt_to_catalogue(prototypes, catalogue)
        results["+ soft k-means on the catalogue (ProductLens default)"] = float(np.mean(
            prototype_head(categories, adapted, centre=centre).predict(features) == truth))
    for name, accuracy in results.items():
        print(f"{name}: {accuracy:.1%}")
    print(json.dumps({"val_images": len(val), "reference_images": len(classes), "accuracy": results}))


if __name__ == "__main__":
    main()
