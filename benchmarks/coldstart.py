"""Cold start on the grocery dataset: one iconic catalogue image per class -> val accuracy.

Compares plain nearest-prototype (the default backbone at 224 px, no flip, no
augmented prototypes) with ProductLens's cold start (the default embedder: its
resolution and passes, prototypes averaged over 2 random
crops), before and after adapting the prototypes to the catalogue (centring,
whitening, soft k-means, :mod:`core.model.coldstart`). The adaptation is *transductive*: it
uses the unlabelled grocery train + val photos, val included (no label of any
train or val photo is used). Writes ``benchmarks/results/coldstart.json``; each
row's name says what it ran.

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
sys.path.insert(0, str(REPO / "benchmarks"))
from _results import accuracy, write_result  # noqa: E402

DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "grocery"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    args = parser.parse_args()
    from core.features.embeddings import Embedder
    from core.model.coldstart import adapt_to_catalogue, prototype_head, reference_prototypes

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
        results = []
        plain = Embedder(image_size=224, flip_tta=False)

        def scored(name, predicted, truth):
            results.append({"name": name, **accuracy(int(np.sum(predicted == truth)), len(truth))})

        categories, prototypes, _ = reference_prototypes(plain, references, augmented_views=0)
        features, _ = plain.embed_sources(val)
        scored(f"plain prototypes: {plain.backbone}, {plain.pooling} pooling, 224 px, no flip, no crops",
               prototype_head(categories, prototypes).predict(features), truth)
        from _grocery import grocery_features

        data = grocery_features(args.dataset)
        embedder = data.embedder
        categories, prototypes, _ = reference_prototypes(embedder, references)
        features = data.val.features
        truth = data.val.labels
        passes = "photo and its mirror" if embedder.flip_tta else "photo alone, no mirror"
        scored(f"ProductLens embedder ({embedder.backbone}, {embedder.pooling} pooling, {embedder.image_size} px, "
               f"{passes}), prototypes averaged over 2 crop views",
               prototype_head(categories, prototypes).predict(features), truth)
        catalogue = np.concatenate([data.train.features, data.val.features])
        centre, _, adapted = adapt_to_catalogue(prototypes, catalogue, iterations=0, shrinkage=None)
        scored("+ centred on the (unlabelled) catalogue's mean feature",
               prototype_head(categories, adapted, centre=centre).predict(features), truth)
        centre, _, adapted = adapt_to_catalogue(prototypes, catalogue, shrinkage=None, sharpness=100.0)
        scored("+ soft k-means on the (unlabelled) catalogue, train + val photos (the default until stop 18)",
               prototype_head(categories, adapted, centre=centre).predict(features), truth)
        centre, transform, adapted = adapt_to_catalogue(prototypes, catalogue, iterations=0)
        scored("centred + whitened with the catalogue's shrunk covariance, no soft k-means",
               prototype_head(categories, adapted, centre=centre, transform=transform).predict(features), truth)
        centre, transform, adapted = adapt_to_catalogue(prototypes, catalogue)
        scored("centred + whitened + soft k-means: the default",
               prototype_head(categories, adapted, centre=centre, transform=transform).predict(features), truth)
        train_truth = data.train.labels
        scored("the default, scored on the grocery *train* photos instead (2,640; their labels unused)",
               prototype_head(categories, adapted, centre=centre, transform=transform).predict(data.train.features),
               train_truth)
    for row in results:
        print(f"{row['name']}: {row['value']:.1%}")
    result = {"val_images": len(val), "reference_images": len(classes), "rows": results}
    write_result("coldstart", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
