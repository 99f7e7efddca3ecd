"""Train: retrain the head on the current labels and see whether it got better."""

import tempfile
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from core.errors import ProductLensError
from core.jobs import cold_start_and_predict, fine_tune_and_predict, retrain_and_predict
from core.model import Taxonomy, activate, compare_versions, confusion_at_level
from pages.shared import (
    can,
    catalog,
    draw_map_ahead,
    embedder,
    order_review_ahead,
    permitted,
    progress_bar,
    require_router,
    show_notices,
    state,
)
from pages.shared.text import chart_text, plain

require_router()


def confusion_figure(classes: list[str], matrix: list[list[int]]) -> go.Figure:
    classes = [chart_text(name) for name in classes]  # Plotly renders HTML in axis labels
    figure = go.Figure(go.Heatmap(z=matrix, x=classes, y=classes, colorscale="Teal",
                                  hovertemplate="true %{y}<br>predicted %{x}<br>%{z} products<extra></extra>"))
    figure.update_layout(xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed",
                         height=max(400, 14 * len(classes)), margin=dict(l=0, r=0, t=10, b=0))
    return figure


def reliability_figure(calibration: dict) -> go.Figure:
    bins = calibration["bins"]
    figure = go.Figure([
        go.Bar(x=[(b["low"] + b["high"]) / 2 for b in bins], y=[b["accuracy"] for b in bins],
               width=[b["high"] - b["low"] for b in bins], name="accuracy", marker_color="#0F766E",
               customdata=[[b["n"], b["confidence"]] for b in bins],
               hovertemplate="confidence %{customdata[1]:.0%}<br>right %{y:.0%}<br>%{customdata[0]} products"
                             "<extra></extra>"),
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly honest", line=dict(dash="dash", color="grey"))])
    figure.update_layout(xaxis_title="confidence", yaxis_title="share right", xaxis_range=[0, 1],
                         yaxis_range=[0, 1], height=400, showlegend=False, margin=dict(l=0, r=0, t=10, b=0))
    return figure


st.title("Train the classifier")
status = catalog().status()
st.caption(f"{status['labelled']} labelled products in {status['categories']} categories. Retraining uses "
           "every current label; predictions for all products refresh afterwards.")

training = can("train")
if not training:
    st.info("Training and activating models is for admins; you can look at every version.")
show_notices()
if st.button("Retrain now", type="primary", disabled=status["labelled"] == 0 or not training) and permitted("train"):
    try:
        started = time.perf_counter()
        version = retrain_and_predict(catalog(), embedder(), progress=progress_bar("Retraining"))
        st.session_state[state.TRAINED_VERSION] = version.id
        draw_map_ahead()
        order_review_ahead()
        # The whole wait, honestly: features of photos not embedded yet, the fit, and every prediction.
        propagated = version.metrics.get("n_propagated", 0)
        st.success(f"Model v{version.id} trained in {time.perf_counter() - started:.1f} s (fitting the head: "
                   f"{version.metrics['train_seconds']:.1f} s) and activated"
                   + (f"; {propagated} unlabelled near-identical shots of labelled products trained with their "
                      "twin's label." if propagated else "."))
    except ProductLensError as error:
        st.error(plain(error))

with st.expander("Fine-tune the image network too (minutes, not seconds)"):
    st.caption("Transfer learning's second stage: the last convolution of the pretrained network learns your "
               "categories as well, then every photo's features are computed again with it. The frozen "
               "ImageNet features stay the default (the README's accuracy table says why); "
               "*Retrain now* goes back to them.")
    if st.button("Fine-tune and retrain", disabled=status["labelled"] == 0 or not training) \
            and permitted("train"):
        try:
            started = time.perf_counter()
            version = fine_tune_and_predict(catalog(), embedder(), progress=progress_bar("Fine-tuning"))
            st.session_state[state.TRAINED_VERSION] = version.id
            draw_map_ahead()
            order_review_ahead()
            st.success(f"Model v{version.id} fine-tuned and activated in {time.perf_counter() - started:.0f} s "
                       f"(fine-tuning itself: {version.metrics['fine_tune_seconds']:.0f} s).")
        except ProductLensError as error:
            st.error(plain(error))

with st.expander("No labels yet? Start from reference photos", expanded=status["labelled"] == 0):
    st.caption("One or a few reference photos per category (e.g. the catalogue packshot), as a zip with one "
               "folder per category. Products are predicted by their nearest reference; the result is a "
               "model version like any other, replaced by your first retrain.")
    with st.form("coldstart"):
        references = st.file_uploader("Zip of category folders", type=["zip"])
        if st.form_submit_button("Predict from references", disabled=not training) and references \
                and permitted("train"):
            with tempfile.TemporaryDirectory() as folder:
                archive = Path(folder) / "references.zip"
                archive.write_bytes(references.getvalue())
                try:
                    version, rejected = cold_start_and_predict(catalog(), embedder(), archive,
                                                               progress_bar("Cold start"))
                    st.success(f"Model v{version.id} predicts {len(version.classes)} categories from "
                               "reference photos. Review its predictions on the Review page.")
                    draw_map_ahead()
                    order_review_ahead()
                    for item in rejected:
                        st.warning(f"{plain(item.name)}: {plain(item.reason)}")
                except ProductLensError as error:
                    st.error(plain(error))

versions = catalog().model_versions()
if not versions:
    st.info("No model yet. Label products in at least two categories, then press Retrain.")
    st.stop()

current = catalog().active_model_version() or versions[-1]
earlier = [v for v in versions if v.id < current.id]
previous = earlier[-1] if earlier else None
metrics, before = current.metrics, previous.metrics if previous else None
columns = st.columns(3)
accuracy = metrics.get("accuracy")
previous_accuracy = before.get("accuracy") if before else None
change = None if accuracy is None or previous_accuracy is None else accuracy - previous_accuracy
# An unchanged accuracy is not a gain: no green "+0.0%".
columns[0].metric(f"Validation accuracy (v{current.id})", "n/a" if accuracy is None else f"{accuracy:.1%}",
                  None if change is None else ("no change" if abs(change) < 0.0005 else f"{change:+.1%}"),
                  delta_color="off" if change is not None and abs(change) < 0.0005 else "normal")
columns[1].metric("Categories", len(current.classes))
columns[2].metric("Training products", metrics.get("n_train", 0))

changes = pd.DataFrame(compare_versions(before, metrics))
if not changes.empty:
    st.subheader("Per-category recall" + (f" vs v{previous.id}" if previous else ""))
    if previous is None:  # a first version has nothing to compare with: no empty columns
        changes = changes[["category", "after"]].rename(columns={"after": "recall"})
    else:  # a category new in this version has no "before": shown empty, not as "None"
        changes["change"] = changes["change"].map(lambda value: "" if value != value or value is None
                                                  else "±0.0%" if abs(value) < 0.0005 else f"{value:+.1%}")
    st.dataframe(changes, hide_index=True, column_config={
        "before": st.column_config.ProgressColumn("before", format="percent", min_value=0, max_value=1),
        "after": st.column_config.ProgressColumn("after", format="percent", min_value=0, max_value=1),
        "recall": st.column_config.ProgressColumn("recall", format="percent", min_value=0, max_value=1),
        "change": st.column_config.TextColumn("change")})

if metrics.get("confusion_matrix"):
    matrix_column, calibration_column = st.columns([3, 2])
    with matrix_column:
        st.subheader("Confusion matrix (validation products)")
        classes, matrix = metrics["classes"], metrics["confusion_matrix"]
        taxonomy = Taxonomy(catalog().category_parents())
        depth = taxonomy.levels(classes)
        if depth > 1:
            level = st.radio("Level of the category tree", list(range(depth)), index=depth - 1, horizontal=True,
                             key=state.TRAIN_LEVEL,
                             format_func=lambda level: "finest" if level == depth - 1 else f"level {level}")
            classes, matrix = confusion_at_level(classes, matrix, taxonomy, level)
            accuracies = {row["level"]: row for row in metrics.get("levels", [])}
            if accuracies:
                st.caption("Validation accuracy by level (coarse levels from the model's own probabilities): "
                           + " · ".join(f"level {row['level']} {row['accuracy']:.1%}"
                                        for row in accuracies.values() if row["accuracy"] is not None))
        st.plotly_chart(confusion_figure(classes, matrix), key="confusion")
    calibration = metrics.get("calibration")
    with calibration_column:
        st.subheader("Is the confidence honest?")
        if calibration:
            st.plotly_chart(reliability_figure(calibration), key="reliability")
            st.caption(f"Validation products grouped by the model's confidence: bars at the diagonal mean "
                       f"“80% sure” is right 80% of the time. Expected calibration error "
                       f"{calibration['ece']:.3f} (0 is perfect).")
        else:
            st.caption("Models trained before this version of ProductLens did not record it: retrain to see it.")

st.subheader("Versions")
for version in reversed(versions):
    row = st.columns([1, 3, 2, 2])
    row[0].markdown(f"**v{version.id}**" + (" · active" if version.is_active else ""))
    row[1].caption(version.created_at[:19].replace("T", " "))
    accuracy = version.metrics.get("accuracy")
    row[2].caption(f"{len(version.classes)} categories · " + ("n/a" if accuracy is None else f"{accuracy:.1%}")
                   + (" · fine-tuned" if version.metrics.get("fine_tuned") else ""))
    if not version.is_active and row[3].button("Activate", key=f"activate-{version.id}", disabled=not training) \
            and permitted("activate"):
        try:
            activate(catalog(), version.id)
        except ProductLensError as error:
            st.error(plain(error))
        else:
            st.rerun()
