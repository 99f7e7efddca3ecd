"""Curation: what helps people label well and fast.

The categories and their tree (:mod:`core.curation.categories`), the review
queue (:mod:`core.curation.review`: filters, orders, relabel, undo)
in active-learning order (:mod:`core.curation.active_learning`), labels that
look wrong (:mod:`core.curation.suspicious`), near-duplicates
(:mod:`core.curation.duplicates`), similar products
(:mod:`core.curation.similarity`) and UMAP maps of the features
(:mod:`core.curation.projection`). Pages use these modules through the names
below.
"""

from core.curation import duplicates, review, suspicious
from core.curation.categories import category_rows
from core.curation.projection import catalogue_map
from core.curation.similarity import ExactIndex, catalog_index, catalogue_state

__all__ = ["ExactIndex", "catalog_index", "catalogue_map", "catalogue_state", "category_rows", "duplicates", "review",
           "suspicious"]
