"""Explore: a UMAP map of the catalogue's CNN features; hover for a photo, click to open, select to relabel."""

import pandas as pd
import plotly.express as px
import streamlit as st

from core.curation import catalogue_map, review
from core.errors import ProductLensError
from core.storage import preview_data_url
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
from pages.shared.map_photos import hover_photos
from pages.shared.text import chart_text, plain

require_router()

COLOURS = {"label": "label", "predicted category": "predicted_label", "confidence": "confidence",
           "label vs model": "agreement"}
# Hover photos travel with the page (about 3 KB each): up to this many products.
HOVER_PHOTOS_UP_TO = 1000
# Every drawn point travels to the browser on each rerun: a bigger map shows a random sample this size.
DRAWN_POINTS_UP_TO = 30_000


@st.cache_data(show_spinner=False, max_entries=4)
def _previews(workspace: str, product_ids: tuple[int, ...]) -> dict[int, str | None]:
    return {pid: preview_data_url(catalog(), pid) for pid in product_ids}


def open_product(row) -> None:
    """One product, as a click on its point opens it: photo, label, what the model says."""
    with st.container(border=True, key="map-product"):
        photo, details = st.columns([1, 3])
        with photo:
            show_thumbnail(row.product_id)
        details.markdown(f"**{plain(row.filename)}** · #{int(row.product_id)}")
        details.text(f"{row.origin}\nlabel: {row.label}\nmodel: {row.predicted_label}"
                     + (f" ({row.confidence:.0%})" if pd.notna(row.confidence) else ""))
        if details.button("Similar products", icon=":material/image_search:"):
            st.session_state[state.SIMILAR_SOURCE] = "a catalogue product"
            st.session_state[state.SIMILAR_PRODUCT] = int(row.product_id)
            st.switch_page("pages/similar.py")

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
    table = catalogue_map(catalog(), key, neighbours, min_dist, shown=DRAWN_POINTS_UP_TO)
if table.attrs["products"] > len(table):
    st.caption(f"Showing {len(table):,} of {table.attrs['products']:,} products, chosen at random; the map "
               "itself holds every product. Review's filters reach the rest.")
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
                     margin=dict(l=0, r=0, t=30, b=0))
event = st.plotly_chart(figure, key="catalogue_map", on_select="rerun", selection_mode=("box", "lasso", "points"))
if len(table) <= HOVER_PHOTOS_UP_TO:  # after the map: it is drawn while the photos are prepared
    hover_photos("catalogue_map", _previews(str(catalog().workspace), tuple(int(pid) for pid in table["product_id"])))

points = event.selection.points if event and event.selection else []
chosen = [int(point["customdata"][0]) for point in points if point.get("customdata")]
if not chosen:
    st.caption(("Hover over a point to see its photo; click" if len(table) <= HOVER_PHOTOS_UP_TO else "Click")
               + " a point to open that product. To relabel many at once, pick the box or lasso in the map's "
               "toolbar and draw around them (a click then selects nothing: pick the pan tool to open products).")
    st.stop()
if len(chosen) == 1:
    open_product(next(table[table["product_id"] == chosen[0]].itertuples()))

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
