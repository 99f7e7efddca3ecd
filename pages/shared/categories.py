"""The category controls admins use on the Review page: rename or merge a category, set a category's parent."""

import streamlit as st

from core.curation import review
from core.errors import ProductLensError
from pages.shared import author, can, catalog, permitted, remember
from pages.shared.text import plain


def manage_categories(categories: list[str], tree: set[str]) -> None:
    """Two forms: rename / merge ``categories``; give any category (or tree node) a parent."""
    with st.form("rename"):
        columns = st.columns(2)
        old = columns[0].selectbox("Category", categories)
        new = columns[1].text_input("New name (an existing name merges the two)")
        if st.form_submit_button("Rename / merge", disabled=not can("rename")) and old and permitted("rename"):
            try:
                changed, conflicts = review.rename_category(catalog(), old, new, author())
                remember(f"Moved {changed} products from {plain(old)} to {plain(new)}.", conflicts)
                st.rerun()
            except ProductLensError as error:
                st.error(plain(error))
    with st.form("parent"):
        st.caption("Category tree: give a category a parent (Fruit › Apple › Granny-Smith). Imports also take it "
                   "from nested folders and from a CSV with the columns category,parent.")
        columns = st.columns(2)
        child = columns[0].selectbox("Category", sorted(set(categories) | tree), index=None, key="parent-child")
        parent = columns[1].selectbox("Parent (type a new one, or leave empty for the top level)",
                                      sorted(set(categories) | tree), index=None, accept_new_options=True,
                                      key="parent-parent")
        if st.form_submit_button("Set parent", disabled=not can("rename")) and child and permitted("rename"):
            try:
                catalog().set_category_parents([(child, parent)], author=author())
                remember(f"{plain(child)} is now under {plain(parent)}." if parent
                         else f"{plain(child)} is now a top-level category.")
                st.rerun()
            except ProductLensError as error:
                st.error(plain(error))
