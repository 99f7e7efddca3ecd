"""Streamlit glue shared by the pages: cached resources, the user's name, progress bars.

Heavy objects (the catalogue connection, the backbone) are created once per
process with ``st.cache_resource``; per-user state lives in ``st.session_state``.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from core.catalog import Catalog
from core.config import workspace_dir
from core.embeddings import Embedder
from core.thumbnails import thumbnail


def _use_the_router() -> None:
    """Make a deep link (``/review``) on a fresh server go through app.py's router.

    With a ``pages/`` folder beside app.py, Streamlit runs a requested page on its
    own (its legacy multipage mode) until some session has run ``st.navigation``;
    the page would then lack the sidebar and the router's set-up. Leaving that
    mode and rerunning sends this and every later run through app.py.
    """
    try:
        from streamlit.runtime.pages_manager import PagesManager
    except ImportError:  # a Streamlit without the legacy mode
        return
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False
        st.rerun()


_use_the_router()


@st.cache_resource(show_spinner=False)
def _catalog(workspace: str) -> Catalog:
    return Catalog(workspace)


def catalog() -> Catalog:
    return _catalog(str(workspace_dir().resolve()))


@st.cache_resource(show_spinner="Loading the image model (once per server)…")
def embedder() -> Embedder:
    model = Embedder()
    # Build, load weights and trace both forward passes (photo + mirror, and views) now,
    # not during the first upload.
    blank = np.zeros((1, model.image_size, model.image_size, 3), np.uint8)
    model.embed_pixels(blank)
    if model.views:
        model.embed_pixels(blank, flip_tta=False)
    return model


def author() -> str | None:
    return st.session_state.get("author") or None


def progress_bar(text: str):
    """A ``(fraction, message)`` callback drawing an ``st.progress`` bar."""
    bar = st.progress(0.0, text=text)
    return lambda fraction, message: bar.progress(float(min(1.0, max(0.0, fraction))), text=f"{text}: {message}")


def thumbnail_path(product_id: int) -> str | None:
    path = thumbnail(catalog(), int(product_id))
    return str(path) if path else None


def show_thumbnail(product_id: int, width="stretch") -> None:
    """The product's photo (nothing if it cannot be read: the card still shows its name)."""
    path = thumbnail_path(product_id)
    if path:
        st.image(path, width=width)


def embedding_key() -> str:
    """The features the active model was trained on; without a model, the default embedder's.

    Only the second case loads the backbone.
    """
    version = catalog().active_model_version()
    return version["backbone"] if version else embedder().key


def show_notices() -> None:
    """What the last action did (a toast), and the corrections someone else's change blocked."""
    if notice := st.session_state.pop("notice", None):
        st.toast(notice)
    for conflict in st.session_state.pop("conflicts", []):
        st.warning(f"Not applied, someone was quicker: {conflict}. The page now shows the current label.")


def _remember_author() -> None:
    st.session_state["author"] = st.session_state["author_input"].strip()


def sidebar() -> None:
    """Common sidebar: who is working (stored with every correction) and the workspace."""
    with st.sidebar:
        # The name lives under its own key: Streamlit drops a widget's state when the
        # page changes, and the name must survive navigation.
        st.text_input("Your name", key="author_input", value=st.session_state.get("author", ""),
                      on_change=_remember_author, placeholder="shown in the label history",
                      help="Recorded with every label you set, so changes can be traced.")
        st.caption(f"Workspace: `{catalog().workspace}`")
