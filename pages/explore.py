"""Explore: a UMAP map of the catalogue's CNN features; select points to inspect and relabel."""

import plotly.express as px
import streamlit as st

from core.curation import catalogue_map, review
from core.errors import ProductLensError
from pages.shared import (
    author,
    can,
    catalog,
    embedding_key,
    permitted,
    require_router,
    show_notices,
    show_thumbnail,
    state,
)
from pages.shared.text import chart_text, plain

require_router()

COLOURS = {"label": "label", "predicted category": "predicted_label", "confidence": "confidence",
           "label vs model": "agreement"}

st.title("Explore the catalogue")
key = embedding_key()
embedded = catalog().count_embeddings(key)
if embedded < 2:
    st.info("Nothing to map yet: upload photos (they are embedded on import) or train a model.")
    st.stop()

with st.expander("Map settings"):
    columns = st.columns(2)
    neighbours = columns[0].slider("Neighbours", 2, 100, 15, help="Larger: more global structure.")
    min_dist = columns[1].slider("Minimum distance", 0.0, 0.99, 0.1, 0.01, help="Smaller: tighter clusters.")
colour = st.segmented_control("Colour by", list(COLOURS), default="label", key=state.EXPLORE_COLOUR) or "label"
if colour == "label vs model":
    st.caption("“wrong”: the label differs from the active model's prediction. The model was trained on these "
               "labels and mostly repeats them, so a wrong label often shows as “right” here: the Suspicious "
               "labels page checks each label with a model trained without it.")

with st.spinner(f"Mapping {embedded} products…"):
    table = catalogue_map(catalog(), key, neighbours, min_dist)
# Plotly renders HTML in legends and hovers: names go in escaped (a category called <a href=…> stays text).
shown = table.assign(**{column: table[column].map(lambda v: v if v is None or v != v else chart_text(v))
                        for column in ("filename", "label", "predicted_label", "agreement") if column in table})
figure = px.scatter(shown, x="x", y="y", color=COLOURS[colour], render_mode="webgl",
                    hover_data={"filename": True, "label": True, "predicted_label": True, "confidence": ":.0%",
                                "x": False, "y": False},
                    custom_data=["product_id"], height=620,
                    color_discrete_sequence=px.colors.qualitative.Dark24 + px.colors.qualitative.Light24)
figure.update_traces(marker=dict(size=7, opacity=0.85))
# The legend goes below the map: on the right, Plotly's toolbar covered its title.
figure.update_layout(xaxis_visible=False, yaxis_visible=False, legend_title_text=colour,
                     legend=dict(orientation="h", yanchor="top", y=-0.02, xanchor="left", x=0),
                     margin=dict(l=0, r=0, t=30, b=0), dragmode="lasso")
event = st.plotly_chart(figure, key="catalogue_map", on_select="rerun", selection_mode=("box", "lasso", "points"))

points = event.selection.points if event and event.selection else []
chosen = [int(point["customdata"][0]) for point in points if point.get("customdata")]
if not chosen:
    st.caption("Draw a box or lasso around points to see those products and relabel them together.")
    st.stop()

st.subheader(f"{len(chosen)} selected products")
with st.form("bulk_relabel"):
    target = st.selectbox("Relabel all selected as", catalog().categories(), index=None, accept_new_options=True,
                          placeholder="Choose or type a category")
    if st.form_submit_button("Relabel", type="primary", disabled=not can("label")) and target \
            and permitted("label"):
        try:
            changed, conflicts = review.relabel(catalog(), chosen, target, author(),
                                                seen=review.seen_labels(table, chosen))
        except ProductLensError as error:  # e.g. a typed category name that is too long
            st.error(plain(error))
        else:
            st.success(f"Labelled {changed} products as {plain(target)}.")
            for conflict in conflicts:
                st.warning(f"Not applied, someone was quicker: {plain(conflict.message())}")
gallery = st.columns(8)
selected_rows = table.set_index("product_id").loc[chosen]
show_notices()
for index, (product_id, row) in enumerate(selected_rows.head(64).iterrows()):
    with gallery[index % 8]:
        show_thumbnail(product_id)
        st.caption(f"label: {plain(row['label'])}  \nmodel: {plain(row['predicted_label'])}")
