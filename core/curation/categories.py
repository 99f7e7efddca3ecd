"""The categories as people see them: each with its parent, its path in the tree and how many products it holds.

:func:`category_rows` lists every category that labels a product or sits in the
tree (a parent such as "Fruit" need not label anything itself), ordered by path,
so the app and ``python -m core categories`` show the same table. Parents are set
with :meth:`core.storage.Catalog.set_category_parents`; the tree's logic lives in
:mod:`core.model.hierarchy`.
"""

from __future__ import annotations

from collections import Counter

from core.model.hierarchy import SEPARATOR, Taxonomy
from core.storage.catalog import Catalog


def category_rows(catalog: Catalog) -> list[dict]:
    """``[{"category", "parent", "path", "level", "products", "products_below"}]`` sorted by path.

    ``products`` counts the products labelled with the category itself,
    ``products_below`` adds those of every category under it.
    """
    counts = Counter(catalog.current_labels().values())
    parents = catalog.category_parents()
    taxonomy = Taxonomy(parents)
    names = set(counts) | set(parents) | set(parents.values())
    below = Counter()
    for name, count in counts.items():
        for node in taxonomy.path(name):
            below[node] += count
    rows = [{"category": name, "parent": parents.get(name), "path": taxonomy.display(name),
             "level": taxonomy.depth(name), "products": counts.get(name, 0), "products_below": below.get(name, 0)}
            for name in names]
    return sorted(rows, key=lambda row: [part.casefold() for part in row["path"].split(SEPARATOR)])
