"""Activity: every label change, who made it and when (the append-only history)."""

import streamlit as st

from core.storage import history_rows
from pages.shared import catalog, require_router

require_router()

st.title("Activity")
st.caption("Every label change is kept: nothing is overwritten, so any mistake can be traced and undone.")
limit = st.select_slider("Show the most recent", [50, 100, 500, 2000, 10000], value=100)
rows = history_rows(catalog(), limit=limit)
if not rows:
    st.info("No label changes yet.")
    st.stop()
who = sorted({row["who"] for row in rows if row["who"]})
chosen = st.multiselect("People", who, placeholder="everyone")
if chosen:
    rows = [row for row in rows if row["who"] in chosen]
st.dataframe(rows, hide_index=True, width="stretch", column_config={
    "when": st.column_config.TextColumn("when (UTC)"), "product_id": st.column_config.NumberColumn("product")})
