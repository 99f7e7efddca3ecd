"""Upload: photos and zip archives in, predicted categories out."""

import streamlit as st

from core import settings
from core.curation import review
from core.jobs import import_and_predict
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
from pages.shared.text import NEW_CATEGORY_HELP, plain

require_router()
limits = settings.current()
SHOWN = 200  # products listed after an upload; the Review page has every one
UNSURE_HELP = ("A coarse category with “?” means the model is sure of that level of the category tree only; "
               "see the best guess.")

st.title("Upload products")
st.caption(f"JPEG, PNG, WebP, BMP, GIF, TIFF or zip archives (folders inside name the category). "
           f"The uploader takes files up to 1 GB so that zip archives fit; inside, each photo can be at most "
           f"{limits.max_file_bytes // 2**20} MB and {limits.max_pixels // 1_000_000} megapixels, and an archive "
           f"{limits.max_zip_bytes // 2**20} MB unpacked. A file over a limit is listed with the reason.")

if not can("import"):
    st.info("Uploading needs the labeller role; ask an admin.")
    st.stop()
# Load the image model while the user picks files (once per server), not after they press the button.
embedder()

with st.form("upload", clear_on_submit=True):
    files = st.file_uploader("Photos or zip archives", accept_multiple_files=True,
                             type=["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "zip"])
    categories = catalog().categories()
    label = st.selectbox("All these are category (optional)", [""] + categories, index=0,
                         accept_new_options=True, help="Leave empty to let the model predict.")
    submitted = st.form_submit_button("Import and predict", type="primary")

show_notices()
if submitted and files and permitted("import"):
    result = import_and_predict(catalog(), [(f.name, f.getvalue()) for f in files], embedder(),
                                label=label or None, progress=progress_bar("Processing"))
    st.session_state[state.LAST_UPLOAD] = result
    if result.report.added:
        draw_map_ahead()
        order_review_ahead()
elif submitted:
    st.warning("Choose at least one file first.")

result = st.session_state.get(state.LAST_UPLOAD)
if result:
    report = result.report
    st.success(f"{len(report.added)} new products, {len(report.duplicates)} already in the catalogue, "
               f"{len(report.rejected)} rejected.")
    if report.rejected:
        with st.expander(f"{len(report.rejected)} files could not be imported", expanded=True):
            st.dataframe([{"file": r.name, "reason": r.reason} for r in report.rejected], hide_index=True)
    if report.duplicates:
        with st.expander(f"{len(report.duplicates)} duplicates (already in the catalogue)"):
            st.dataframe([{"file": name, "product": pid} for name, pid in report.duplicates], hide_index=True)
    if result.prediction_error:
        st.warning(f"Imported, but not predicted: {plain(result.prediction_error)}")
    table = review.prediction_table(catalog(), result.product_ids[:SHOWN], report.names)
    if table.empty:  # every file was refused: the list above says why
        st.stop()
    if table["prediction"].isna().all() and not result.prediction_error:
        st.info("No model yet: label some products and train one on the Train page to get predictions.")
    # One table, not a card per product: 50 photos draw in a fraction of the time, and it sorts by any column.
    unsure = table["best_guess"].notna().any()  # a coarse fallback needs its best guess beside it
    shown_table = table.assign(confidence=table["confidence"] * 100, best_guess=table["best_guess"].fillna(""))
    st.dataframe(
        shown_table.drop(columns=["product_id"] + ([] if unsure else ["best_guess"])).rename(
            columns={"new_category": "new category?"}), hide_index=True,
        row_height=64, column_config={
            "photo": st.column_config.ImageColumn("photo", width="small", help="Double-click to enlarge."),
            "file": st.column_config.TextColumn("file"),
            "prediction": st.column_config.TextColumn("predicted category", help=UNSURE_HELP),
            "best_guess": st.column_config.TextColumn("best guess", help="The exact category the model leans to, "
                                                      "when it is only sure of the coarser one."),
            "confidence": st.column_config.ProgressColumn("confidence", min_value=0.0, max_value=100.0,
                                                          format="%.0f%%"),
            "new category?": st.column_config.CheckboxColumn("new category?", help=NEW_CATEGORY_HELP),
        })
    if len(result.product_ids) > SHOWN:
        st.caption(f"…and {len(result.product_ids) - SHOWN:,} more: see the Review page.")
    st.page_link("pages/review.py", label="Review the predictions", icon=":material/fact_check:")
