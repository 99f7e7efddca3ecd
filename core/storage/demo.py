"""The demo catalogue shipped in ``assets/demo``: 10 categories x 8 grocery photos.

:func:`load_demo` imports it with labels, except the last photo of each
category, which stays unlabelled so that the whole loop (predict, review,
correct, retrain) can be tried at once.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import CatalogError
from core.storage import ingest
from core.storage.catalog import Catalog

DEMO_DIR = Path(__file__).resolve().parents[2] / "assets" / "demo"


def load_demo(catalog: Catalog, unlabelled_per_category: int = 1, progress=None) -> ingest.ImportReport:
    if not DEMO_DIR.is_dir():
        raise CatalogError(f"demo photos not found in {DEMO_DIR}: reinstall ProductLens")
    report = ingest.import_paths(catalog, [DEMO_DIR], progress=progress, apply_labels=False)
    by_category: dict[str, list[int]] = {}
    for product_id in dict.fromkeys(report.product_ids):
        by_category.setdefault(report.found_labels[product_id], []).append(product_id)
    assignments = [(product_id, category) for category, ids in by_category.items()
                   for product_id in ids[:len(ids) - unlabelled_per_category]]
    report.labelled = catalog.set_labels(assignments, source="import", only_if_unlabelled=True)
    return report
