"""Streamlit glue shared by the pages: cached resources, who is signed in, notices, thumbnails.

Heavy objects (the catalogue connection, the backbone) are created once per
process with ``st.cache_resource``; per-user state lives in ``st.session_state``
under the names in :mod:`pages.shared.state`. This package is not a page: it
lives in a sub-folder so that Streamlit never lists it as one.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import streamlit as st

from core.curation import projection, review
from core.errors import AccessDeniedError, CatalogError
from core.features import Embedder, backbones, quantized
from core.jobs.pipeline import version_embedder
from core.security import Account, SignInThrottle, require
from core.settings import current as current_settings
from core.settings import workspace_dir
from core.storage import Catalog, database_url, thumbnail
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
    ("pages/team.py", "Team", ":material/group:"),
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
    every later run through app.py. A workspace with accounts shows the sign-in
    form instead of the page until the session has signed in.
    """
    if not st.session_state.get(state.ROUTED):
        st.navigation(navigation_pages(_home_placeholder), position="hidden")
        st.rerun()
    if needs_sign_in():  # app.py already stops before the page; this holds for a page run any other way
        sign_in_form()
        st.stop()


@st.cache_resource(show_spinner=False)
def _catalog(workspace: str, database: str) -> Catalog:
    return Catalog(workspace, database=database)


def catalog() -> Catalog:
    """The workspace's catalogue; a damaged one stops the page with a short message (no server paths)."""
    workspace = str(workspace_dir().resolve())
    try:
        return _catalog(workspace, database_url())
    except CatalogError as error:
        message = str(error).replace(workspace + "/", "").replace(workspace, "the workspace folder")
        st.error(f"The workspace cannot be opened: {plain(message)}. Ask whoever runs this server.")
        st.stop()


@st.cache_resource(show_spinner="Loading the image model (once per server; on a new machine it is first "
                                "converted to 8 bits, about half a minute)…")
def embedder() -> Embedder:
    model = Embedder()
    # Build, load weights and trace both forward passes (photo + mirror, and views) now,
    # not during the first upload.
    blank = np.zeros((1, model.image_size, model.image_size, 3), np.uint8)
    model.embed_pixels(blank)
    if model.views:
        model.embed_pixels(blank, flip_tta=False)
    return model


# Seconds the warm-up waits, so that the page that started it renders first (they share the interpreter).
WARM_UP_DELAY_S = 3.0
# Product pickers list every product up to this many (type to filter); above, they search the catalogue.
PICKER_LISTS_UP_TO = 10_000


@st.cache_resource(show_spinner=False)
def warm_up_in_background() -> threading.Thread | None:
    """Once per server, on a machine that has never drawn a map or never converted the 8-bit image
    model: compile the Explore map's kernels and convert the model in a background thread, a few
    seconds after the first page.

    A thread, not a process (a fork from the server can deadlock it). Where the disk caches
    already hold them nothing runs: the warm-up would only load them, and while it did, it
    slowed the first page of every new server by seconds (the interpreter is shared). A
    failure here is not shown: the map and the first embedding report their own errors.
    """
    kernels = projection.warm_up_needed()
    conversion = quantized_model_needed()
    if not kernels and not conversion:
        return None

    def warm_up() -> None:
        time.sleep(WARM_UP_DELAY_S)
        try:
            if kernels:
                projection.warm_up()
            if conversion:
                model = Embedder()
                if model.precision == "int8":  # not where a GPU makes float32 the default
                    quantized.quantized_graph(model.backbone, model.weights, model.image_size, model.pooling)
        except Exception:  # noqa: BLE001 - best effort; the map and the first embedding report for themselves
            pass

    thread = threading.Thread(target=warm_up, name="productlens-warm-up", daemon=True)
    thread.start()
    return thread


def quantized_model_needed() -> bool:
    """Whether the default image model may run in 8 bits and has not been converted on this machine yet.

    Reads the settings and the cache only (importing TensorFlow to ask for a GPU costs seconds)."""
    configured = current_settings()
    if configured.precision not in (None, "int8"):
        return False
    spec = backbones.spec(configured.backbone)
    return not quantized.is_converted(configured.backbone, "imagenet", spec.image_size, spec.default_pooling)


def draw_map_ahead() -> threading.Thread | None:
    """After the catalogue's products or model changed: draw the Explore map in a background thread.

    Explore then reads it from the workspace's cache, in this server or in the next one;
    opened while the thread still works, it waits for the same map instead of drawing it
    twice. The thread starts a few seconds late, so the page that asked renders first.
    Above :data:`~core.curation.projection.MAP_SAMPLE` products only the new ones are placed
    on the kept map (it is drawn afresh when the catalogue has doubled).
    """
    workspace, key = catalog(), embedding_key()
    if workspace.count_embeddings(key) < 2:
        return None

    def draw() -> None:
        time.sleep(WARM_UP_DELAY_S)
        try:
            projection.umap_projection(workspace, key)
        except Exception:  # noqa: BLE001 - best effort; Explore computes and reports for itself
            pass

    thread = threading.Thread(target=draw, name="productlens-map-ahead", daemon=True)
    thread.start()
    return thread


@st.cache_resource(show_spinner=False, max_entries=4)
def _review_queue(workspace: str, version_id: int, key: str, predicted: int) -> list[int]:
    return review.informative_queue(catalog(), version_id, review.catalog_vectors(catalog(), key))


def review_queue() -> list[int] | None:
    """The active version's "most informative" order, computed once per version (None: no model yet).

    While the queue is brought up to date after an upload (in the background), the previous one
    is used: new products show at its end until then.
    """
    version = catalog().active_model_version()
    if version is None:
        return None
    if not review.queue_file(catalog(), version.id).is_file():  # else the cached one below is current
        stored = review.stored_queue(catalog(), version.id)
        if stored is not None:
            order_review_ahead()
            return stored[0]
    with st.spinner("Putting the most informative products first (once per model version)…"):
        return _review_queue(str(catalog().workspace), version.id, embedding_key(),
                             catalog().count_predictions(version.id))


_ORDERING: set[int] = set()  # versions whose queue a background thread is computing now


def order_review_ahead() -> threading.Thread | None:
    """After a retrain or an upload: compute the review queue in a background thread, so the Review
    page only reads it (kept in the workspace's cache for every session and the next server)."""
    workspace, version, key = catalog(), catalog().active_model_version(), embedding_key()
    if version is None or version.id in _ORDERING:
        return None
    _ORDERING.add(version.id)

    def order() -> None:
        time.sleep(WARM_UP_DELAY_S)
        try:
            review.informative_queue(workspace, version.id, review.catalog_vectors(workspace, key))
        except Exception:  # noqa: BLE001 - best effort; the Review page computes and reports for itself
            pass
        finally:
            _ORDERING.discard(version.id)

    thread = threading.Thread(target=order, name="productlens-review-ahead", daemon=True)
    thread.start()
    return thread


@st.cache_resource(show_spinner=False)
def _throttle() -> SignInThrottle:  # one per server: guesses from every session count together
    return SignInThrottle()


def account() -> Account:
    """Who is using this browser session, with the role stored now (a role change applies at once).

    Without accounts: the one local user, named in the sidebar, trusted with everything.
    """
    if not catalog().has_accounts():
        return Account(st.session_state.get(state.AUTHOR) or None, "admin", signed_in=False)
    name = st.session_state.get(state.ACCOUNT)
    stored = catalog().user_password_hash(name) if name else None
    if stored is None:  # never signed in, or the account was removed meanwhile
        st.session_state.pop(state.ACCOUNT, None)
        return Account(None, "viewer", signed_in=False)
    return Account(name, stored[1])


def author() -> str | None:
    """The name recorded with a label change: the signed-in account, or the local user's typed name."""
    return account().name


def can(action: str) -> bool:
    return account().can(action)


def permitted(action: str) -> bool:
    """Whether this session may do ``action`` now; if not, the reason is shown on the next run.

    Pages also hide or disable what a role cannot do; this is the check that runs when the action does.
    """
    try:
        require(account(), action)
    except AccessDeniedError as error:
        remember_error(error)
        return False
    return True


def _single_sign_on_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # no secrets.toml at all
        return False


def needs_sign_in() -> bool:
    """True when the workspace has accounts and this session is not signed in to one."""
    if not catalog().has_accounts():
        return False
    if account().signed_in:
        return False
    if _single_sign_on_configured() and st.user.is_logged_in:
        # Single sign-on proves who it is; the role still comes from this workspace's accounts.
        email = st.user.get("email")
        if email and catalog().user_password_hash(email):
            st.session_state[state.ACCOUNT] = email
            return False
    return True


def sign_in_form() -> None:
    """The sign-in page shown instead of every page until the session signs in."""
    st.title("Sign in to ProductLens")
    st.caption("This workspace has accounts. Ask an admin for one (`python -m core users add NAME --role ROLE`).")
    with st.form("sign-in"):
        name = st.text_input("Account name")
        password = st.text_input("Password", type="password")
        if st.form_submit_button("Sign in", type="primary"):
            try:
                signed_in = _throttle().authenticate(catalog(), name, password)
            except AccessDeniedError as error:
                st.error(plain(error))
            else:
                st.session_state[state.ACCOUNT] = signed_in.name
                st.rerun()
    if _single_sign_on_configured():
        if st.user.is_logged_in:
            st.warning(f"{plain(st.user.get('email') or 'This account')} has no account in this workspace.")
            st.button("Sign out of single sign-on", on_click=st.logout)
        else:
            st.button("Sign in with single sign-on", on_click=st.login)


def _sign_out() -> None:
    st.session_state.pop(state.ACCOUNT, None)
    if _single_sign_on_configured() and st.user.is_logged_in:
        st.logout()


def progress_bar(text: str):
    """A ``(fraction, message)`` callback drawing an ``st.progress`` bar."""
    bar = st.progress(0.0, text=text)
    return lambda fraction, message: bar.progress(float(min(1.0, max(0.0, fraction))), text=f"{text}: {message}")


def show_thumbnail(product_id: int, width="stretch") -> None:
    """The product's photo (nothing if it cannot be read: the card still shows its name)."""
    path = thumbnail(catalog(), int(product_id))
    if path:
        st.image(str(path), width=width)


def features_embedder() -> Embedder:
    """The embedder that computes the features :func:`embedding_key` names (the active model's own: a
    fine-tuned one's, or one trained before a default changed)."""
    version = catalog().active_model_version()
    if version is not None and version.embedding_key != embedder().key:
        return version_embedder(catalog(), version)
    return embedder()


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
    """Common sidebar: who is working (recorded with every correction)."""
    with st.sidebar:
        if catalog().has_accounts():
            current = account()
            if current.signed_in:
                st.caption(f"Signed in as {plain(current.name)} · {current.role}")
                st.button("Sign out", on_click=_sign_out, icon=":material/logout:")
            return
        # The name lives under its own key: Streamlit drops a widget's state when the
        # page changes, and the name must survive navigation.
        st.text_input("Your name", key=state.AUTHOR_INPUT, value=st.session_state.get(state.AUTHOR, ""),
                      on_change=_remember_author, placeholder="shown in the label history",
                      help="Recorded with every label you set, so changes can be traced.")
        st.caption("No accounts: anyone who opens this app can change everything. "
                   "`python -m core users add NAME --role admin` turns on sign-in.")
