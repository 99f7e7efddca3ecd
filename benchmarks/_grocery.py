"""Shared by the benchmarks: the grocery dataset embedded once, in a reusable workspace.

``grocery_features()`` imports ``train/`` (labelled by folder) and ``val/``
(unlabelled: val labels never enter the catalogue) into
``benchmarks/results/grocery-workspace``, embeds everything with the default
embedder plus the default augmented training views, and returns plain arrays.
The first call takes ~10 minutes on 2 cores; later calls read the cache.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "grocery"
DEFAULT_WORKSPACE = REPO / "benchmarks" / "results" / "grocery-workspace"


@dataclass
class Split:
    ids: np.ndarray
    features: np.ndarray
    labels: np.ndarray          # fine class names (folder names)
    paths: list[str]
    views: list[np.ndarray] = field(default_factory=list)


@dataclass
class Grocery:
    catalog: object
    embedder: object
    train: Split
    val: Split
    coarse: dict[str, str]


def coarse_map(dataset: Path = DEFAULT_DATASET) -> dict[str, str]:
    with open(dataset / "classes.csv") as handle:
        return {row["Class Name (str)"]: row["Coarse Class Name (str)"] for row in csv.DictReader(handle)}


def _progress(stage):
    def report(done, total, _message):
        if total and (done == total or done % 256 == 0):
            print(f"  {stage}: {done}/{total}", file=sys.stderr, flush=True)
    return report


def grocery_features(dataset: Path = DEFAULT_DATASET, workspace: Path = DEFAULT_WORKSPACE,
                     augmented_views: int | None = None, embedder=None) -> Grocery:
    from core import settings
    from core.features.embeddings import Embedder, embed_catalog
    from core.storage import ingest
    from core.storage.catalog import Catalog

    if not (dataset / "train").is_dir():
        sys.exit(f"dataset not found at {dataset} (expected train/ and val/ folders)")
    augmented_views = settings.current().views if augmented_views is None else augmented_views
    embedder = embedder or Embedder()
    catalog = Catalog(workspace)
    roots = {"train": (dataset / "train").resolve(), "val": (dataset / "val").resolve()}
    if catalog.count_products() == 0:
        ingest.import_paths(catalog, [roots["train"]], progress=_progress("import train"))
        ingest.import_paths(catalog, [roots["val"]], progress=_progress("import val"), apply_labels=False)
    embed_catalog(catalog, embedder, progress=_progress("embed"))
    splits = {}
    for name, root in roots.items():
        ids, labels, paths = [], [], []
        for product in catalog.products():
            source = Path(product.source or "")
            if root in source.parents:
                ids.append(product.id)
                labels.append(source.parent.name)
                paths.append(str(source))
        vector_ids, features = catalog.embeddings(embedder.key, ids)
        order = {pid: i for i, pid in enumerate(ids)}
        keep = [order[int(pid)] for pid in vector_ids]
        splits[name] = Split(vector_ids, features, np.array(labels, dtype=object)[keep], [paths[i] for i in keep])
    train = splits["train"]
    for view in range(augmented_views):
        embed_catalog(catalog, embedder, progress=_progress(f"view {view + 1}"), product_ids=train.ids.tolist(),
                      view=view)
        view_ids, view_features = catalog.embeddings(embedder.view_key(view), train.ids.tolist())
        if not np.array_equal(view_ids, train.ids):
            raise RuntimeError("augmented view missing for some training photos")
        train.views.append(view_features)
    return Grocery(catalog, embedder, train, splits["val"], coarse_map(dataset))
