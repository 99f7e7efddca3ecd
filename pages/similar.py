"""Similar products: the nearest products to a catalogue product or to a photo you upload."""

import streamlit as st

from core.curation import catalog_index, catalogue_state
from pages import shared
from pages.shared import catalog, embedding_key, features_embedder, require_router, show_thumbnail, state
from pages.shared.text import plain

require_router()

COLUMNS = 5


@st.cache_resource(show_spinner=False, max_entries=2)
def _index(workspace: str, key: str, state: tuple):
    # Rebuilt when products are embedded, archived or restored (an archived duplicate is no answer).
    return catalog_index(catalog(), key)


st.title("Similar products")
key = embedding_key()
embedded = catalog().count_embeddings(key)
if embedded < 2:
    st.info("Nothing to search yet: upload photos first (they are embedded on import).")
    st.stop()

source = st.segmented_control("Find products similar to", ["a catalogue product", "a photo"],
                              default="a catalogue product", key=state.SIMILAR_SOURCE) or "a catalogue product"
k = st.slider("How many", 1, 50, 10)
query = None
if source == "a catalogue product":
    if embedded <= shared.PICKER_LISTS_UP_TO:
        products = {p.id: p.filename for p in catalog().products()}
    else:  # a million names in a drop-down would be megabytes on every rerun: search first
        typed = st.text_input("Find a product", placeholder="its id, or part of its file name",
                              key=state.SIMILAR_SEARCH)
        products = {p.id: p.filename for p in catalog().find_products(typed)}
    chosen = st.selectbox("Product", list(products), format_func=lambda pid: f"#{pid} {products[pid]}",
                          index=None, placeholder="type a file name or id…",
                          key=state.SIMILAR_PRODUCT)
    if chosen is not None:
        ids, vectors = catalog().embeddings(key, [chosen])
        query = vectors[0] if len(ids) else None
        show_thumbnail(chosen, width=160)
else:
    upload = st.file_uploader("Query photo", type=None, key=state.SIMILAR_UPLOAD)
    if upload is not None:
        vectors, failures = features_embedder().embed_sources([upload.getvalue()])
        if failures:
            st.error(f"{plain(upload.name)}: {plain(failures[0][1])}")
        else:
            query = vectors[0]
            st.image(upload.getvalue(), width=160)
if query is None:
    st.stop()

# One more than asked for: a catalogue product is not its own neighbour (an uploaded photo that is
# already in the catalogue does show it, as the exact match it is).
state_now = catalogue_state(catalog(), key)
neighbour_ids, scores = _index(str(catalog().workspace), key, state_now).query(query, k=k + 1)
results = [(int(pid), float(score)) for pid, score in zip(neighbour_ids[0], scores[0])
           if not (source == "a catalogue product" and int(pid) == chosen)][:k]
labels = catalog().labels_of([pid for pid, _score in results])
names = {p.id: p.filename for p in catalog().products([pid for pid, _score in results])}
grid = st.columns(COLUMNS)
for index, (product_id, score) in enumerate(results):
    with grid[index % COLUMNS].container(border=True):
        show_thumbnail(product_id)
        st.caption(f"**{score:.3f}** · #{product_id} {plain(names[product_id])}  \n"
                   f"{plain(labels.get(product_id) or 'unlabelled')}")
