"""Streamlit glue shared by the pages: cached resources, the user's name, notices, thumbnails.

Heavy objects (the catalogue connection, the backbone) are created once per
process with ``st.cache_resource``; per-user state lives in ``st.session_state``
under the names in :mod:`pages.shared.state`. This package is not a page: it
lives in a sub-folder so that Streamlit never lists it as one.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from core.features import Embedder
from core.settings import workspace_dir
from core.storage import Catalog, thumbnail
from pages.shared import state
from pages.shared.text import plain

# Every page but Home (app.py's own): file, title, icon. app.py's router and require_router() share it.
PAGES = [
    ("pages/upload.py", "Upload", ":material/upload:"),
    ("pages/review.py", "Review", ":material/fact_check:"),
    ("pages/train.py", "Train", ":material/model_training:"),
    ("pages/explore.py", "Explore", ":material/scatter_plot:"),
    ("pages/suspicious.py", "Suspicious labels", ":material/report:"),
    ("pages/duplicates.py", "Duplicates", ":material/content_copy:"),
    ("pages/similar.py", "Similar products", ":material/image_search:"),
    ("pages/activity.py", "Activity", ":material/history:"),
]


def navigation_pages(home) -> list:
    """``st.Page`` objects for the router: ``home`` (a function) first, then :data:`PAGES`."""
    return [st.Page(home, title="Home", icon=":material/home:", default=True)] + [
        st.Page(path, title=title, icon=icon) for path, title, icon in PAGES]


def _home_placeholder() -> None:  # never shown: require_router() reruns into app.py's real router
    pass


def require_router() -> None:
    """Make every page run inside app.py's router (sidebar, navigation, set-up).

    On a fresh server, a deep link (``/review``) would run the page on its own,
    in Streamlit's older ``pages/`` folder mode, until some session has called
    ``st.navigation``. Calling it here with the app's pages (the public way to
    leave that mode, keeping the requested page) and rerunning sends this and
    every later run through app.py.
    """
    if not st.session_state.get(state.ROUTED):
        st.navigation(navigation_pages(_home_placeholder), position="hidden")
        st.rerun()


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
    return st.session_state.get(state.AUTHOR) or None


def progress_bar(text: str):
    """A ``(fraction, message)`` callback drawing an ``st.progress`` bar."""
    bar = st.progress(0.0, text=text)
    return lambda fraction, message: bar.progress(float(min(1.0, max(0.0, fraction))), text=f"{text}: {message}")


def show_thumbnail(product_id: int, width="stretch") -> None:
    """The product's photo (nothing if it cannot be read: the card still shows its name)."""
    path = thumbnail(catalog(), int(product_id))
    if path:
        st.image(str(path), width=width)


def embedding_key() -> str:
    """The features the active model was trained on; without a model, the default embedder's.

    Only the second case loads the backbone.
    """
    version = catalog().active_model_version()
    return version.embedding_key if version else embedder().key


def remember(notice: str, conflicts=()) -> None:
    """Keep what an action did for the next run, where :func:`show_notices` shows it."""
    st.session_state[state.NOTICE] = notice
    st.session_state[state.CONFLICTS] = [conflict.message() for conflict in conflicts]


def remember_error(error: Exception) -> None:
    """Keep a user-fixable error from an action (a callback cannot show it itself) for the next run."""
    st.session_state[state.ERROR] = str(error)


def show_notices() -> None:
    """What the last action did (a toast), its error, and the corrections someone else's change blocked."""
    if notice := st.session_state.pop(state.NOTICE, None):
        st.toast(notice)
    if error := st.session_state.pop(state.ERROR, None):
        st.error(plain(error))
    for conflict in st.session_state.pop(state.CONFLICTS, []):
        st.warning(f"Not applied, someone was quicker: {plain(conflict)}. The page now shows the current label.")


def _remember_author() -> None:
    st.session_state[state.AUTHOR] = st.session_state[state.AUTHOR_INPUT].strip()


def sidebar() -> None:
    """Common sidebar: who is working (stored with every correction)."""
    with st.sidebar:
        # The name lives under its own key: Streamlit drops a widget's state when the
        # page changes, and the name must survive navigation.
        st.text_input("Your name", key=state.AUTHOR_INPUT, value=st.session_state.get(state.AUTHOR, ""),
                      on_change=_remember_author, placeholder="shown in the label history",
                      help="Recorded with every label you set, so changes can be traced.")
