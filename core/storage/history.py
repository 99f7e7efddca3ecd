"""The label history as people read it: who changed which product's label, when, from what to what.

The history itself is the catalogue's append-only ``labels`` table; this module
only joins it with file names for the Activity page and ``python -m core history``.
"""

from __future__ import annotations

from core.storage.catalog import Catalog


def history_rows(catalog: Catalog, product_id: int | None = None, limit: int | None = 100) -> list[dict]:
    """Newest first: ``when, who, product_id, filename, from, to, source, undo`` (``undo``: the event reverts an
    earlier action)."""
    events = catalog.label_history(product_id, limit=limit)
    names = {p.id: p.filename for p in catalog.products(sorted({e.product_id for e in events}))}
    return [{"when": e.created_at, "who": e.author, "product_id": e.product_id,
             "filename": names.get(e.product_id), "from": e.previous_label, "to": e.label, "source": e.source,
             "undo": bool(e.action and e.action.startswith("undo:"))}
            for e in events]
