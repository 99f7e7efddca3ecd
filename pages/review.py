"""Review: the correction workbench; the most informative products come first."""

import streamlit as st

from core.curation import review
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
    state,
)
from pages.shared.text import plain

require_router()

PAGE_SIZE = 12
COLUMNS = 4

st.title("Review predictions")
table = review.review_table(catalog())
if table.empty:
    st.info("No products yet: upload photos or load the demo catalogue on the Home page.")
    st.stop()
categories = catalog().categories()


@st.cache_resource(show_spinner=False, max_entries=1)
def _features(key: str, embedded: int):
    # For the diversity guard; re-read only when the number of embedded products changes.
    return catalog().embeddings(key)


key = embedding_key()
labelling = can("label")
if not labelling:
    st.info("You can look at predictions; labelling needs the labeller role.")


def set_label(product_ids, label, seen):
    if not permitted("label"):
        return
    try:
        changed, conflicts = review.relabel(catalog(), product_ids, label, author(), seen=seen)
    except ProductLensError as error:  # e.g. a typed category name that is too long
        remember_error(error)
        return
    remember(f"Labelled {changed} product(s) as {plain(label)}.", conflicts)


with st.expander("Filters and order", expanded=False):
    filter_columns = st.columns(4)
    order = filter_columns[0].selectbox(
        "Order", review.ORDERS, key=state.REVIEW_ORDER,
        help="Most informative: unlabelled products the model is torn between (smallest gap between its two "
             "best guesses), near-identical shots spread over pages. Highest entropy and random are the "
             "alternative strategies.")
    predicted = filter_columns[1].multiselect("Predicted category", sorted(table["predicted_label"].dropna().unique()))
    status = filter_columns[2].radio("Show", ["all", "unlabelled", "labelled"], horizontal=True,
                                     key=state.REVIEW_STATUS)
    disagreements = filter_columns[3].toggle("Label disagrees with prediction", key=state.REVIEW_DISAGREE)
    confidence = st.slider("Confidence", 0.0, 1.0, (0.0, 1.0), 0.05, key=state.REVIEW_CONFIDENCE)

selected = review.select(table, order=order, predicted=predicted, confidence_range=confidence,
                         labelled={"all": None, "unlabelled": False, "labelled": True}[status],
                         disagreements_only=disagreements, features=_features(key, catalog().count_embeddings(key)),
                         page_size=PAGE_SIZE)
pages = max(1, -(-len(selected) // PAGE_SIZE))
top = st.columns([2, 2, 2, 1])
page = top[0].number_input(f"Page (of {pages})", 1, pages, 1, key=state.REVIEW_PAGE)
top[1].metric("Matching products", len(selected))
if top[3].button("Undo last action", icon=":material/undo:", disabled=not labelling) and permitted("undo"):
    undone, conflicts = review.undo_last_action(catalog(), author())
    remember(f"Undid {undone} change(s)." if undone or conflicts else "Nothing to undo.", conflicts)
    st.rerun()
show_notices()

visible = selected.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
grid = st.columns(COLUMNS)
for index, row in enumerate(visible.itertuples()):
    with grid[index % COLUMNS].container(border=True):
        show_thumbnail(row.product_id)
        st.text(row.filename)
        current = row.label if isinstance(row.label, str) else None
        if row.predicted_label:
            st.markdown(f"Predicted **{plain(row.predicted_label)}** · {row.confidence:.0%}")
        st.markdown(f"Label: **{plain(current)}**" if current else "Label: _none_")
        for label, probability in list(zip(row.top_labels, row.top_probabilities))[:3]:
            st.button(f"{plain(label)} · {probability:.0%}", key=f"pick-{row.product_id}-{label}",
                      on_click=set_label, args=([row.product_id], label, {row.product_id: current}),
                      width="stretch", disabled=not labelling,
                      type="primary" if label == current else "secondary")
        choice = st.selectbox("Any category", [""] + categories, key=f"any-{row.product_id}",
                              accept_new_options=True, label_visibility="collapsed",
                              placeholder="Other category…")
        if choice and choice != current:
            st.button(f"Set “{plain(choice)}”", key=f"set-{row.product_id}", on_click=set_label,
                      args=([row.product_id], choice, {row.product_id: current}), disabled=not labelling)
        st.checkbox("Select", key=state.selected_card(row.product_id))

st.divider()
st.subheader("Bulk actions")
bulk = st.columns(3)
with bulk[0].form("accept"):
    threshold = st.slider("Accept predictions at or above", 0.5, 1.0, 0.9, 0.01)
    if st.form_submit_button("Accept for unlabelled products", disabled=not labelling) and permitted("label"):
        accepted = review.accept_predictions(catalog(), threshold, author())
        remember(f"Accepted {accepted} predictions.")
        st.rerun()
with bulk[1].form("relabel"):
    ticked = [pid for pid in visible["product_id"] if st.session_state.get(state.selected_card(pid))]
    target = st.selectbox("Relabel selected cards as", categories, accept_new_options=True)
    if st.form_submit_button(f"Relabel {len(ticked)} selected", disabled=not labelling):
        if ticked and target:
            set_label(ticked, target, review.seen_labels(visible, ticked))
            st.rerun()
with bulk[2]:
    st.write("Unlabelled cards on this page take their predicted category.")
    if st.button("Confirm this page", disabled=not labelling) and permitted("label"):
        confirmed = review.confirm(catalog(), visible["product_id"].tolist(), author())
        remember(f"Confirmed {confirmed} predictions.")
        st.rerun()

with st.expander("Manage categories (admins)"):
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
