"""Duplicates: near-identical photos side by side; keep one, or give the group one label."""

import streamlit as st

from core.curation import duplicates
from core.errors import ProductLensError
from pages.shared import (
    author,
    can,
    catalog,
    embedding_key,
    permitted,
    remember,
    remember_error,
    require_router,
    show_notices,
    show_thumbnail,
)
from pages.shared.text import plain

require_router()

MAX_GROUPS = 20
THUMBNAILS_PER_ROW = 6
THUMBNAIL_WIDTH = 96


@st.cache_data(show_spinner="Finding near-identical products…", max_entries=4)
def _found(workspace: str, key: str, threshold: float, catalogue_state: tuple) -> duplicates.FoundGroups:
    # Found again only when products were embedded or archived (labels never enter); in a big catalogue
    # the groups kept in the workspace come back at once, however old, and say so.
    return duplicates.find_groups(catalog(), key, threshold, reuse_kept=True)


st.title("Duplicates")
st.caption("Identical files are never stored twice (an upload of one shows as a duplicate on the Upload page). "
           "Here: photos whose CNN features are nearly the same — re-encoded, resized or cropped copies, "
           "or the same product shot twice.")
key = embedding_key()
threshold = st.slider("Similarity threshold", 0.80, 1.0, duplicates.DEFAULT_THRESHOLD, 0.005,
                      help="Cosine similarity of the features. Lower finds more (and looser) groups.")
found = _found(str(catalog().workspace), key, threshold, duplicates.catalogue_state(catalog(), key))
if not found.current:
    age, again = st.columns([4, 1], vertical_alignment="center")
    age.caption(f"Groups found {found.found_at[:16].replace('T', ' ')} UTC among {found.products:,} products; "
                "products were added or archived since.")
    if again.button("Find again", help="Compares every product with its nearest neighbours: minutes for a "
                                       "million products."):
        with st.spinner("Finding near-identical products…"):
            duplicates.find_groups(catalog(), key, threshold)
        _found.clear()
        st.rerun()
groups = duplicates.describe_groups(catalog(), key, found.groups, limit=MAX_GROUPS)
st.metric("Groups", len(found.groups), help=f"{sum(len(g) for g in found.groups)} products in groups")
show_notices()
if not groups:
    st.success("No near-duplicates at this threshold.")

for number, group in enumerate(groups[:MAX_GROUPS]):
    ids = group["product_ids"]
    # One compact row per group: small photos on the left, the decision on the right.
    with st.container(border=True):
        photos, decision = st.columns([3, 2])
        photos.markdown(f"**Group {number + 1}** · {len(ids)} photos · similarity ≥ {group['min_similarity']:.3f}")
        cells = photos.columns(THUMBNAILS_PER_ROW)
        for index, (product_id, filename, label) in enumerate(zip(ids, group["filenames"], group["labels"])):
            with cells[index % THUMBNAILS_PER_ROW]:
                show_thumbnail(product_id, width=THUMBNAIL_WIDTH)
                st.caption(f"#{product_id} {plain(filename)}  \n{plain(label) if label else 'unlabelled'}")
        shown = dict(zip(ids, group["labels"]))  # what the person sees: the optimistic check's baseline
        with decision.form(f"group-{ids[0]}", border=False):
            keep = st.selectbox("Keep", ids, format_func=lambda pid: f"#{pid}")
            options = sorted({label for label in group["labels"] if label} | set(catalog().categories()))
            default = options.index(group["majority_label"]) if group["majority_label"] in options else None
            label = st.selectbox("Label", options, index=default, accept_new_options=True)
            action = st.selectbox("Action", ["Keep one, archive the others", "Give all this label"],
                                  help="Archiving is for admins; labellers can give the group one label.")
            if st.form_submit_button("Apply", disabled=not can("label")) and \
                    permitted("archive" if action.startswith("Keep") else "label"):
                try:
                    if action.startswith("Keep"):
                        archived, conflicts = duplicates.keep_one(catalog(), ids, keep, label, author(), seen=shown)
                        remember(f"Kept #{keep}, archived {archived} (restorable below).", conflicts)
                    elif label:
                        changed, conflicts = duplicates.merge_labels(catalog(), ids, label, author(), seen=shown)
                        remember(f"{changed} label(s) set to {plain(label)}.", conflicts)
                except ProductLensError as error:  # e.g. a typed category name that is too long
                    remember_error(error)
                st.rerun()
if len(found.groups) > MAX_GROUPS:
    st.caption(f"Showing the {MAX_GROUPS} largest of {len(found.groups)} groups; resolve some or raise the threshold.")

archived = catalog().archived()
if archived:
    with st.expander(f"Archived products ({len(archived)})"):
        for record in archived[-50:]:
            row = st.columns([3, 1])
            row[0].caption(f"#{record['product_id']} · {plain(record['reason'])} of #{record['kept_product_id']} · "
                           f"{plain(record['author'] or '-')} · {record['created_at'][:16].replace('T', ' ')}")
            if row[1].button("Restore", key=f"restore-{record['product_id']}", disabled=not can("archive")) \
                    and permitted("archive"):
                catalog().restore_products([record["product_id"]])
                st.rerun()
