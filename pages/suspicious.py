"""Suspicious labels: labels the model, trained without them, confidently disagrees with."""

import streamlit as st

from core.curation import suspicious
from core.errors import ProductLensError
from pages.shared import (
    author,
    can,
    catalog,
    embedding_key,
    permitted,
    remember,
    require_router,
    show_notices,
    show_thumbnail,
    state,
)
from pages.shared.text import plain

require_router()

COLUMNS = 4
SHOWN = 24

st.title("Suspicious labels")
st.caption("Each labelled product is predicted by a head trained on the *other* products (5-fold "
           "cross-validation; a product's near-identical shots are held out with it, so they cannot vouch for "
           "it). A label is flagged when that head finds it very unlikely and prefers another category. "
           "Most suspicious first. “Label is right” is remembered.")
key = embedding_key()

if st.button("Find suspicious labels", type="primary", disabled=catalog().count_labelled() < 10):
    with st.spinner("Cross-validating the head on every label…"):
        try:
            st.session_state[state.SUSPICIOUS] = suspicious.suspicious_labels(catalog(), key)
        except ProductLensError as error:
            st.error(plain(error))
if state.SUSPICIOUS not in st.session_state:
    st.info("Press the button to check every current label (a few seconds per thousand products).")
    st.stop()

issues, statistics = st.session_state[state.SUSPICIOUS]
issues = suspicious.still_open(catalog(), issues)
st.metric("Flagged labels", len(issues), help=f"of {statistics['labelled']} labelled products; check took "
          f"{statistics['seconds']:.1f} s")
if issues.empty:
    st.success("No suspicious labels left.")
    st.stop()


def use_suggestions(rows):
    if not permitted("label"):
        return
    changed, conflicts = suspicious.use_suggestions(catalog(), rows, author())
    remember(f"Relabelled {changed} product(s).", conflicts)


def keep_label(product_ids):
    if not permitted("label"):
        return
    shown = issues.set_index("product_id")["label"]
    marked = suspicious.mark_label_right(catalog(), product_ids, author(),
                                         seen={int(pid): shown.get(pid) for pid in product_ids})
    remember(f"Kept {marked} label(s); they will not be flagged again.")


show_notices()

visible = issues.head(SHOWN)
labelling = can("label")
bulk = st.columns(2)
bulk[0].button(f"Use the suggestion for all {len(visible)} shown", on_click=use_suggestions, args=(visible,),
               disabled=not labelling)
bulk[1].button(f"All {len(visible)} shown are right", on_click=keep_label,
               args=(visible["product_id"].tolist(),), disabled=not labelling)
grid = st.columns(COLUMNS)
for index, row in enumerate(visible.itertuples()):
    with grid[index % COLUMNS].container(border=True):
        show_thumbnail(row.product_id)
        st.caption(f"{plain(row.filename)} · {row.label_source} label")
        st.markdown(f"Label **{plain(row.label)}** ({row.label_quality:.0%})  \n"
                    f"Suggested **{plain(row.suggested_label)}** ({row.suggested_probability:.0%})")
        st.button(f"Use {plain(row.suggested_label)}", key=f"fix-{row.product_id}", type="primary", width="stretch",
                  on_click=use_suggestions, args=(visible.iloc[[index]],), disabled=not labelling)
        st.button("Label is right", key=f"keep-{row.product_id}", width="stretch",
                  on_click=keep_label, args=([int(row.product_id)],), disabled=not labelling)
