"""ProductLens: the home page and router of the Streamlit app."""

import streamlit as st

from core.catalog import Catalog
from core.config import workspace_dir

st.set_page_config(page_title="ProductLens", page_icon="🔎", layout="wide")


@st.cache_resource
def open_catalog(workspace: str) -> Catalog:
    return Catalog(workspace)


catalog = open_catalog(str(workspace_dir()))
status = catalog.status()

st.title("ProductLens")
st.caption("Sort product photos into categories with a pretrained CNN and a head you retrain in seconds.")

columns = st.columns(4)
columns[0].metric("Products", status["products"])
columns[1].metric("Labelled", status["labelled"])
columns[2].metric("Categories", status["categories"])
model = status["active_model"]
columns[3].metric("Active model", f"v{model['version']}" if model else "none")

if status["products"] == 0:
    st.info("The catalogue is empty. Import photos from the command line: "
            "`python -m core import path/to/folder-of-category-folders`, then `python -m core train`.")
st.caption(f"Workspace: `{status['workspace']}`")
