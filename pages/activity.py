"""Activity: every label change, who made it and when (the append-only history)."""

import streamlit as st

from core.storage import history_rows
from pages.shared import catalog, require_router

require_router()

SOURCES = {"human": "correction", "import": "import", "model-accepted": "accepted prediction"}

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
st.dataframe([{"when": row["when"][:19].replace("T", " "), "who": row["who"] or "",
               "product": row["product_id"], "file": row["filename"] or "",
               "from": row["from"] or "(unlabelled)", "to": row["to"] or "(unlabelled)",
               "how": "undo" if row["undo"] else SOURCES.get(row["source"], row["source"])} for row in rows],
             hide_index=True, width="stretch", column_config={"when": st.column_config.TextColumn("when (UTC)")})
