"""ProductLens: the router and the home page of the Streamlit app."""

import time
from pathlib import Path

import streamlit as st

from core.jobs import load_demo_and_embed
from pages.shared import (
    can,
    catalog,
    draw_map_ahead,
    embedder,
    navigation_pages,
    needs_sign_in,
    order_review_ahead,
    permitted,
    progress_bar,
    remember,
    show_notices,
    sidebar,
    sign_in_form,
    state,
    warm_up_in_background,
)

# Beside this file, not the working directory: `streamlit run /elsewhere/app.py` finds them too.
ASSETS = Path(__file__).resolve().parent / "assets"
st.set_page_config(page_title="ProductLens", page_icon=str(ASSETS / "icon.svg"), layout="wide")
st.logo(str(ASSETS / "logo.svg"), icon_image=str(ASSETS / "icon.svg"))
warm_up_in_background()


def home() -> None:
    show_notices()
    status = catalog().status()
    st.title("ProductLens")
    st.caption("Sort product photos into categories: predictions from a pretrained CNN, "
               "a head you retrain in seconds on your corrections.")
    if status["products"] == 0:
        st.info("Your catalogue is empty. Upload photos, or try ProductLens on a small demo catalogue "
                "(10 grocery categories, 80 photos, a few left unlabelled).")
        if st.button("Load demo catalogue", type="primary", disabled=not can("import")) and permitted("import"):
            started = time.perf_counter()
            # Features are computed now, with a progress bar, so the first training is only training.
            report, _embedded = load_demo_and_embed(catalog(), embedder(), progress_bar("Loading the demo"))
            remember(f"Imported {len(report.added)} demo photos and computed their features in "
                     f"{time.perf_counter() - started:.0f} s. Next: train a model.")
            draw_map_ahead()
            order_review_ahead()
            st.rerun()
        st.page_link("pages/upload.py", label="Upload photos", icon=":material/upload:")
        return
    model = status["active_model"]
    awaiting = status["unlabelled"]
    columns = st.columns(5)
    columns[0].metric("Products", status["products"])
    columns[1].metric("Labelled", status["labelled"])
    columns[2].metric("Awaiting review", awaiting)
    columns[3].metric("Categories", status["categories"])
    columns[4].metric("Active model", f"v{model['version']}" if model else "none",
                      f"{model['accuracy']:.0%} validation accuracy" if model and model["accuracy"] else None,
                      delta_color="off")
    if model:
        st.caption(f"Last retrain: {model['created_at'][:16].replace('T', ' ')} UTC")
    st.subheader("Next")
    if model is None:
        st.page_link("pages/train.py", label="Train your first model", icon=":material/model_training:")
    elif awaiting:
        st.page_link("pages/review.py", label=f"Review {awaiting} unlabelled products, most informative first",
                     icon=":material/fact_check:")
    st.page_link("pages/upload.py", label="Upload more photos", icon=":material/upload:")
    st.page_link("pages/explore.py", label="Explore the catalogue map", icon=":material/scatter_plot:")
    if status["labelled"]:
        st.page_link("pages/suspicious.py", label="Check for labels that look wrong", icon=":material/report:")
    st.page_link("pages/duplicates.py", label="Find near-duplicate photos", icon=":material/content_copy:")


signing_in = needs_sign_in()
# Every page stays registered while signing in (a deep link keeps its page); none is listed or run.
navigation = st.navigation(navigation_pages(home), position="hidden" if signing_in else "sidebar")
st.session_state[state.ROUTED] = True
if signing_in:
    sign_in_form()
    st.stop()
sidebar()
navigation.run()
