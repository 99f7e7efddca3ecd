"""Review: the correction workbench; the most informative products come first. Works from the keyboard."""

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
    review_queue,
    show_notices,
    show_thumbnail,
    state,
)
from pages.shared.categories import manage_categories
from pages.shared.keys import keyboard_shortcuts
from pages.shared.text import NEW_CATEGORY, NEW_CATEGORY_HELP, plain

require_router()

PAGE_SIZE = 12
COLUMNS = 4
SUGGESTIONS = 3  # buttons on a card; the focused card shows every suggestion the model kept (keys 1-9)
UNSURE_HELP = ("The model is not sure enough of the exact category, only of the coarser one shown (the "
               "category tree, under Manage categories); the buttons below are its best guesses.")
KEYS = [("1 – 9", "give the focused card its 1st … 9th suggestion"), ("Enter", "accept the focused card's prediction"),
        ("← → ↑ ↓", "move between cards (→ on the last card opens the next page)"),
        ("X", "select the focused card for a bulk action"), ("Z", "undo your last action"),
        ("?", "show or hide this list")]

st.title("Review predictions")
product_count = catalog().count_products()
if not product_count:
    st.info("No products yet: upload photos or load the demo catalogue on the Home page.")
    st.stop()
# A large catalogue is filtered, sorted and paged by the database (the default view: one page of the stored queue).
large = product_count >= review.PAGED_FROM
table = None if large else review.review_table(catalog())
categories = catalog().categories()
parents = catalog().category_parents()
tree = set(parents) | set(parents.values())  # every category that has a parent or is one


key = embedding_key()
labelling = can("label")
if not labelling:
    st.info("You can look at predictions; labelling needs the labeller role.")


def set_label(product_ids, label, seen, card_order=None):
    if not permitted("label"):
        return
    try:
        changed, conflicts = review.relabel(catalog(), product_ids, label, author(), seen=seen)
    except ProductLensError as error:  # e.g. a typed category name that is too long
        remember_error(error)
        return
    remember(f"Labelled {changed} product(s) as {plain(label)}.", conflicts)
    if card_order is not None:  # a card labelled on its own: the next card gets the focus
        move_focus(card_order, product_ids[0], +1)


def pick_other(product_id, current):
    """The "Other category…" picker applies its choice at once (no second button)."""
    choice = st.session_state.get(state.other_category(product_id))
    if choice and choice != current:
        set_label([product_id], choice, {product_id: current})


def undo():
    if not permitted("undo"):
        return
    undone, conflicts = review.undo_last_action(catalog(), author())
    remember(f"Undid {undone} change(s)." if undone or conflicts else "Nothing of yours to undo.", conflicts)


def move_focus(card_order, from_product, step):
    """Focus the card ``step`` cards after ``from_product`` (by product id, so a relabelled card leaving the
    list does not shift the focus); past the last card, the first card of the next page."""
    ids, page_count = card_order
    index = ids.index(from_product) if from_product in ids else 0
    target = index + step
    if target >= len(ids) and st.session_state.get(state.REVIEW_PAGE, 1) < page_count:
        st.session_state[state.REVIEW_PAGE] = st.session_state.get(state.REVIEW_PAGE, 1) + 1
        st.session_state[state.REVIEW_FOCUS] = None  # the first card of the new page
    else:
        st.session_state[state.REVIEW_FOCUS] = ids[min(max(target, 0), len(ids) - 1)]


def toggle_selected(product_id):
    st.session_state[state.selected_card(product_id)] = not st.session_state.get(state.selected_card(product_id))


def toggle_keys():
    st.session_state[state.REVIEW_KEYS] = not st.session_state.get(state.REVIEW_KEYS)


with st.expander("Filters and order", expanded=False):
    filter_columns = st.columns(4)
    order = filter_columns[0].selectbox(
        "Order", review.ORDERS, key=state.REVIEW_ORDER,
        help="Most informative: unlabelled products the model is torn between (smallest gap between its two "
             "best guesses), near-identical shots spread over pages. Highest entropy and random are the "
             "alternative strategies.")
    version = catalog().active_model_version()
    predicted = filter_columns[1].multiselect(
        "Predicted category", sorted(version.classes if version else []) if large
        else sorted(table["predicted_label"].dropna().unique()))
    status = filter_columns[2].radio("Show", ["all", "unlabelled", "labelled"], horizontal=True,
                                     key=state.REVIEW_STATUS)
    disagreements = filter_columns[3].toggle("Only disagreements", key=state.REVIEW_DISAGREE,
                                             help="Products whose label differs from the model's prediction.")
    new_only = filter_columns[3].toggle("Only “New category?”", key=state.REVIEW_NEW_CATEGORY,
                                        help="Products unlike every labelled one: label a few with the new "
                                             "category (select them, then Relabel), and retrain.")
    confidence = st.slider("Confidence", 0.0, 1.0, (0.0, 1.0), 0.05, key=state.REVIEW_CONFIDENCE)
    tree_nodes = sorted(tree) if large else sorted({node for nodes in table["within"] for node in nodes} & set(tree))
    under = st.multiselect("Under category (any level)", tree_nodes, key=state.REVIEW_UNDER,
                           help="Products whose label or prediction lies under these categories of the tree "
                                "(set parents under Manage categories).") if tree else []

queue = review_queue() if order == review.DEFAULT_ORDER else None
filters = dict(predicted=predicted, confidence_range=confidence, disagreements_only=disagreements,
               labelled={"all": None, "unlabelled": False, "labelled": True}[status], new_category_only=new_only,
               under=under)
vectors_of = review.catalog_vectors(catalog(), key)
requested = max(1, st.session_state.get(state.REVIEW_PAGE, 1))
if large:  # the database filters, sorts and pages: a render reads its page
    where = review.review_filter(catalog(), **filters)

    def page_of(number):
        return review.filtered_page(catalog(), number, PAGE_SIZE, order, where, queue, vectors_of)

    with st.spinner("Finding the matching products…"):
        visible, matching = page_of(requested)
else:
    selected = review.select(table, order=order, vectors_of=vectors_of, queue=queue, page_size=PAGE_SIZE, **filters)
    matching = len(selected)
pages = max(1, -(-matching // PAGE_SIZE))
if requested > pages:
    st.session_state[state.REVIEW_PAGE] = pages
top = st.columns([2, 2, 2, 2])
page = top[0].number_input(f"Page (of {pages})", 1, pages, 1, key=state.REVIEW_PAGE)
top[1].metric("Matching products", matching)
top[2].button("Undo my last action", icon=":material/undo:", key="undo", on_click=undo, disabled=not labelling,
              help="Reverts your most recent labelling action (key Z); never someone else's later change.")
top[3].button("Keyboard shortcuts", icon=":material/keyboard:", key="keys", on_click=toggle_keys,
              help="Key ?")
if st.session_state.get(state.REVIEW_KEYS):
    st.table([{"key": keys, "does": does} for keys, does in KEYS])
show_notices()

if not large:
    visible = selected.iloc[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
elif page != requested:
    visible, _ = page_of(page)
ids = [int(pid) for pid in visible["product_id"]]
card_order = (ids, pages)
if st.session_state.get(state.REVIEW_FOCUS) not in ids:
    st.session_state[state.REVIEW_FOCUS] = ids[0] if ids else None
focused = st.session_state[state.REVIEW_FOCUS]
# The focused card is outlined; its container key is the one the style below names.
st.html("<style>.st-key-focused-card { outline: 3px solid #0F766E; outline-offset: 2px; }</style>")

grid = st.columns(COLUMNS)
for index, row in enumerate(visible.itertuples()):
    is_focused = row.product_id == focused
    with grid[index % COLUMNS].container(border=True, key="focused-card" if is_focused else f"card-{row.product_id}"):
        show_thumbnail(row.product_id)
        st.text(row.filename)
        st.caption(plain(row.origin))
        current = row.label if isinstance(row.label, str) else None
        if row.predicted_label and row.answer != row.predicted_label:  # too unsure of the fine category
            st.markdown(f"Predicted **{plain(row.answer)}**", help=UNSURE_HELP)
            st.caption(f"Best guess {plain(row.predicted_label)} · {row.confidence:.0%}")
        elif row.predicted_label:
            st.markdown(f"Predicted **{plain(row.predicted_label)}** · {row.confidence:.0%}")
        if row.predicted_label and row.new_category == True:  # noqa: E712 - a numpy bool, or None: not judged
            st.caption(NEW_CATEGORY, help=NEW_CATEGORY_HELP)
        st.markdown(f"Label: **{plain(current)}**" if current else "Label: _none_")
        suggestions = list(zip(row.top_labels, row.top_probabilities))[:9 if is_focused else SUGGESTIONS]
        for number, (label, probability) in enumerate(suggestions, start=1):
            hint = f"{number} · " if is_focused else ""
            # The focused card's buttons have fixed keys, so the key map below never changes between runs.
            st.button(f"{hint}{plain(label)} · {probability:.0%}",
                      key=f"focus-pick-{number}" if is_focused else f"pick-{row.product_id}-{number}",
                      on_click=set_label, args=([row.product_id], label, {row.product_id: current}, card_order),
                      width="stretch", disabled=not labelling,
                      type="primary" if label == current else "secondary")
        st.selectbox("Other category", categories, index=None, key=state.other_category(row.product_id),
                     accept_new_options=True, label_visibility="collapsed", disabled=not labelling,
                     placeholder="Other category…", on_change=pick_other, args=(row.product_id, current))
        st.checkbox("Select", key=state.selected_card(row.product_id))

if focused is not None:
    row = visible[visible["product_id"] == focused].iloc[0]
    current = row["label"] if isinstance(row["label"], str) else None
    shortcuts = {str(number): f"focus-pick-{number}" for number in range(1, 10)}
    # Hidden-in-plain-sight buttons the keys press: each is also a mouse control for the focused card.
    st.caption("Focused card (outlined): press a key, or use these buttons.")
    controls = st.columns(6)
    controls[0].button("◀ Previous", key="focus-previous", on_click=move_focus, args=(card_order, focused, -1))
    controls[1].button("Next ▶", key="focus-next", on_click=move_focus, args=(card_order, focused, +1))
    controls[2].button("▲ Row up", key="focus-up", on_click=move_focus, args=(card_order, focused, -COLUMNS))
    controls[3].button("▼ Row down", key="focus-down", on_click=move_focus, args=(card_order, focused, +COLUMNS))
    controls[4].button("Accept prediction", key="accept-focused", disabled=not labelling or not row["predicted_label"],
                       on_click=set_label, args=([focused], row["predicted_label"], {focused: current}, card_order))
    controls[5].button("Select / unselect", key="select-focused", on_click=toggle_selected, args=(focused,))
    keyboard_shortcuts({**shortcuts, "Enter": "accept-focused", "ArrowLeft": "focus-previous",
                        "ArrowRight": "focus-next", "ArrowUp": "focus-up", "ArrowDown": "focus-down",
                        "x": "select-focused", "z": "undo", "?": "keys"})

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
    target = st.selectbox("Relabel selected cards as", categories, index=None, accept_new_options=True,
                          placeholder="Choose or type a category")
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
    manage_categories(categories, tree)
