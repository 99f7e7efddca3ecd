import numpy as np
import pytest

from core.curation import review
from core.storage import ingest
from core.storage.catalog import Catalog

# Runs on SQLite and on a real PostgreSQL server (conftest.database).
pytestmark = pytest.mark.usefixtures("database")


@pytest.fixture
def catalog(workspace, demo_dir):
    catalog = Catalog(workspace)
    ingest.import_paths(catalog, [demo_dir / "Lemon"], label="Lemon")
    ingest.import_paths(catalog, [demo_dir / "Banana"])  # unlabelled
    ids = catalog.product_ids()
    # Hand-made predictions so the ordering is known exactly.
    version = catalog.add_model_version("test", ["Banana", "Lemon"], {}, {}, "models/none.keras")
    confidences = [0.9 - 0.05 * i for i in range(len(ids))]
    labels = [["Lemon", "Banana"] if i < 8 else ["Banana", "Lemon"] for i in range(len(ids))]
    labels[3] = ["Banana", "Lemon"]  # a labelled lemon predicted as banana
    catalog.store_predictions(version, ids, labels, [[c, 1 - c] for c in confidences])
    return catalog


def test_table_joins_labels_and_predictions(catalog):
    table = review.review_table(catalog)
    assert len(table) == 16
    assert table["label"].notna().sum() == 8
    assert table["disagrees"].sum() == 1
    assert table.loc[table["disagrees"], "product_id"].item() == catalog.product_ids()[3]


def test_margin_order_is_the_uncertainty_queue(catalog):
    table = review.review_table(catalog)
    ordered = review.select(table, order="smallest margin")
    unlabelled = ordered["label"].isna().to_numpy()
    assert unlabelled[:8].all() and not unlabelled[8:].any(), "unlabelled products come first"
    margins = [abs(p[0] - p[1]) for p in ordered["top_probabilities"][:8]]
    assert margins == sorted(margins), "smallest margin (most uncertain) first"


def test_diversity_guard_spreads_near_identical_products_over_pages(catalog):
    table = review.review_table(catalog)
    ids = table["product_id"].to_numpy()
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(len(ids), 16)).astype(np.float32)
    uncertain = review.select(table, order="smallest margin")["product_id"].tolist()[:4]
    clump = rng.normal(size=16)
    for pid in uncertain[:3]:  # the three most uncertain products are the same shot
        vectors[list(ids).index(pid)] = clump + 0.01 * rng.normal(size=16)
    ordered = review.select(table, order="smallest margin", features=(ids, vectors),
                            page_size=4)["product_id"].tolist()
    first_page = ordered[:4]
    assert uncertain[0] in first_page
    assert len(set(uncertain[:3]) & set(first_page)) == 1, "one shot of the clump per page"
    assert sorted(ordered) == sorted(ids.tolist()), "deferred products are not dropped"


def test_default_queue_skips_products_that_labels_already_cover(catalog):
    table = review.review_table(catalog)
    ids = table["product_id"].to_numpy()
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(len(ids), 16)).astype(np.float32)
    labelled = table.loc[table["label"].notna(), "product_id"].tolist()
    unlabelled = table.loc[table["label"].isna(), "product_id"].tolist()
    covered = unlabelled[0]  # a shot nearly identical to a labelled product
    vectors[list(ids).index(covered)] = vectors[list(ids).index(labelled[0])] + 0.01 * rng.normal(size=16)
    ordered = review.select(table, features=(ids, vectors), page_size=4)
    assert ordered["label"].isna().to_numpy()[:len(unlabelled)].all(), "unlabelled products first"
    assert ordered["product_id"].tolist()[len(unlabelled) - 1] == covered, "the covered shot comes last"
    assert sorted(ordered["product_id"]) == sorted(ids)


def test_least_confident_first_and_filters(catalog):
    table = review.review_table(catalog)
    ordered = review.select(table, order="least confident")
    assert list(ordered["confidence"]) == sorted(table["confidence"])
    assert len(review.select(table, labelled=False)) == 8
    assert len(review.select(table, disagreements_only=True)) == 1
    assert set(review.select(table, predicted=["Banana"])["predicted_label"]) == {"Banana"}
    assert review.select(table, confidence_range=(0.5, 0.7))["confidence"].between(0.5, 0.7).all()
    newest = review.select(table, order="newest")
    assert newest["product_id"].iloc[0] == max(catalog.product_ids())
    shuffled = review.select(table, order="random")
    assert sorted(shuffled["product_id"]) == sorted(table["product_id"])
    assert list(shuffled["product_id"]) == list(review.select(table, order="random")["product_id"]), "seeded"
    with pytest.raises(ValueError):
        review.select(table, order="alphabetical")


def test_accept_only_touches_unlabelled_products_above_threshold(catalog):
    before = review.review_table(catalog).set_index("product_id")
    due = before[before["label"].isna() & (before["confidence"] >= 0.5)]
    assert 0 < len(due) < before["label"].isna().sum(), "the threshold must split the unlabelled products"
    accepted = review.accept_predictions(catalog, 0.5, author="bo")
    after = review.review_table(catalog).set_index("product_id")
    assert accepted == len(due)
    assert after.loc[due.index, "label"].tolist() == due["predicted_label"].tolist()
    assert (after.loc[due.index, "label_source"] == "model-accepted").all()
    untouched = before.index.difference(due.index)
    assert after.loc[untouched, "label"].equals(before.loc[untouched, "label"])


def test_accepting_reads_no_table_skips_archived_and_flagged_and_never_overwrites_a_colleague(catalog, monkeypatch):
    version = catalog.active_model_version().id
    unlabelled = review.review_table(catalog).query("label.isna()")["product_id"].tolist()
    archived, flagged, colleagues, *others = unlabelled
    catalog.archive_products([archived], reason="duplicate")
    catalog.store_predictions(version, [flagged], [["Banana", "Lemon"]], np.array([[0.99, 0.01]]), new_category=[True])
    real = catalog.acceptable_predictions

    def read_then_a_colleague_labels(*args, **kwargs):
        chosen = real(*args, **kwargs)
        if colleagues in dict(chosen):
            catalog.set_labels([(colleagues, "Lemon")], author="ana")  # between the read and the write
        return chosen

    monkeypatch.setattr(catalog, "acceptable_predictions", read_then_a_colleague_labels)
    monkeypatch.setattr(review, "review_table", lambda *args, **kwargs: pytest.fail("read the whole table"))
    assert review.confirm(catalog, others[:2], author="bo") == 2, "a page's confirm takes only its products"
    assert review.accept_predictions(catalog, 0.0, author="bo") == len(others) - 2
    assert catalog.current_label(colleagues) == "Lemon", "a colleague's label in the meantime is kept"
    assert catalog.current_label(archived) is None and catalog.current_label(flagged) is None
    assert all(catalog.current_label(pid) == "Banana" for pid in others)


def test_relabel_rename_merge_and_undo(catalog):
    ids = catalog.product_ids()
    assert review.relabel(catalog, ids[:2], "Lime", author="ana") == (2, [])
    assert review.rename_category(catalog, "Lemon", "Citrus") == (6, [])
    assert review.rename_category(catalog, "Lime", "Citrus") == (2, [])  # merge
    assert set(catalog.current_labels().values()) == {"Citrus"}
    assert review.undo_last_action(catalog) == (2, [])
    assert catalog.current_label(ids[0]) == "Lime"
    assert review.undo_last_action(catalog) == (6, [])  # steps further back
    assert catalog.current_label(ids[5]) == "Lemon"
    assert review.undo_last_action(catalog, author="ana") == (2, [])
    assert catalog.current_label(ids[0]) == "Lemon"
    assert len(catalog.label_history(ids[0])) == 5, "history keeps every step"
    with pytest.raises(ValueError):
        review.rename_category(catalog, "Nope", "X")


def test_a_correction_against_a_stale_view_is_reported_not_applied(catalog):
    product = catalog.product_ids()[0]
    seen = catalog.current_label(product)  # both people loaded the page showing "Lemon"
    assert review.relabel(catalog, [product], "Lime", "ana", seen={product: seen}) == (1, [])
    changed, conflicts = review.relabel(catalog, [product], "Orange", "bo", seen={product: seen})
    assert changed == 0 and len(conflicts) == 1
    assert (conflicts[0].current_label, conflicts[0].changed_by, conflicts[0].wanted_label) == ("Lime", "ana", "Orange")
    assert "ana changed it to Lime" in conflicts[0].message()
    assert catalog.current_label(product) == "Lime"


def test_undo_never_overwrites_a_later_change_by_someone_else(catalog):
    carrots, other = catalog.product_ids()[:2]
    catalog.set_labels([(carrots, "Carrots")], author="import")
    review.relabel(catalog, [carrots, other], "Leek", author="alice")
    review.relabel(catalog, [carrots], "Asparagus", author="bob", seen={carrots: "Leek"})
    changed, conflicts = review.undo_last_action(catalog, author="alice")
    assert catalog.current_label(carrots) == "Asparagus", "Bob's later change stays"
    assert changed == 1 and catalog.current_label(other) != "Leek", "the rest of Alice's action is undone"
    assert [(c.product_id, c.current_label, c.changed_by) for c in conflicts] == [(carrots, "Asparagus", "bob")]


def test_undo_without_a_name_never_reverts_a_named_colleagues_action(catalog):
    product = catalog.product_ids()[0]
    before = catalog.current_label(product)
    review.relabel(catalog, [product], "Leek", author="bob")
    assert review.undo_last_action(catalog, author=None) == (0, []), "nothing of the unnamed user's to undo"
    assert catalog.current_label(product) == "Leek"
    review.relabel(catalog, [product], "Carrots", author=None, seen={product: "Leek"})
    assert review.undo_last_action(catalog, author=None) == (1, [])
    assert catalog.current_label(product) == "Leek" != before


def test_a_category_tree_gives_coarse_answers_an_any_level_filter_and_follows_a_rename(catalog):
    catalog.set_category_parents([("Lemon", "Citrus"), ("Citrus", "Fruit"), ("Banana", "Fruit")])
    table = review.review_table(catalog, threshold=0.7)
    best = table["top_probabilities"].map(max)
    sure, unsure = table[best >= 0.7], table[best < 0.7]
    assert len(sure) and len(unsure)
    assert (sure["answer"] == [labels[int(np.argmax(probabilities))] for labels, probabilities
                               in zip(sure["top_labels"], sure["top_probabilities"])]).all()
    assert set(unsure["answer"]) == {"Fruit › ?"}, "Lemon + Banana is sure to be fruit, not which fruit"
    citrus = review.select(table, order="category", under=["Citrus"])
    expected = table[(table["label"] == "Lemon") | (table["predicted_label"] == "Lemon")]
    assert sorted(citrus["product_id"]) == sorted(expected["product_id"]) and len(citrus) < len(table)
    assert len(review.select(table, order="category", under=["Fruit"])) == len(table)

    review.rename_category(catalog, "Lemon", "Citron", author="ana")
    assert catalog.category_parents() == {"Citron": "Citrus", "Citrus": "Fruit", "Banana": "Fruit"}


def test_the_most_informative_queue_is_computed_once_per_version_and_kept(catalog, monkeypatch, demo_dir):
    ids = catalog.product_ids()
    vectors = np.random.default_rng(0).normal(size=(len(ids), 8))
    lookup = review.vectors_from((np.array(ids), vectors))
    version = catalog.active_model_version().id
    queue = review.informative_queue(catalog, version, lookup, page_size=4)
    expected = review.select(review.review_table(catalog), features=(np.array(ids), vectors), page_size=4)
    assert queue == expected["product_id"].tolist(), "the stored queue is the order computed in memory"

    computed = []
    real = review._queue
    monkeypatch.setattr(review, "_queue", lambda *args, **kwargs: computed.append(1) or real(*args, **kwargs))
    assert review.informative_queue(catalog, version, lookup, page_size=4) == queue and not computed, "kept"
    catalog.set_labels([(queue[0], "Banana")], author="ana")
    ordered = review.select(review.review_table(catalog), queue=queue)["product_id"].tolist()
    computed.clear()  # select read the stored queue: nothing was computed again
    labels = catalog.current_labels()
    assert ordered == [p for p in queue if p not in labels] + [p for p in queue if p in labels], \
        "a product labelled since moves behind the unlabelled ones"

    new = ingest.import_paths(catalog, [demo_dir / "Orange"]).added[0]
    catalog.store_predictions(version, [new], [["Lemon", "Banana"]], np.array([[0.5, 0.5]]))
    lookup = review.vectors_from((np.array(ids + [new]), np.vstack([vectors, np.ones((1, 8))])))
    again = review.informative_queue(catalog, version, lookup, page_size=4)
    assert computed and new in again, "an upload's products take their place in a new queue"
    assert len(list((catalog.workspace / "cache").glob(f"review-queue-v{version}-*.npy"))) == 1, "old one removed"


def test_a_stored_queue_is_found_without_computing_and_says_whether_it_is_current(catalog, demo_dir):
    version = catalog.active_model_version().id
    assert review.stored_queue(catalog, version) is None
    ids = catalog.product_ids()
    lookup = review.vectors_from((np.array(ids), np.random.default_rng(1).normal(size=(len(ids), 8))))
    queue = review.informative_queue(catalog, version, lookup, page_size=4)
    assert review.stored_queue(catalog, version) == (queue, True)
    new = ingest.import_paths(catalog, [demo_dir / "Orange"]).added[0]
    catalog.store_predictions(version, [new], [["Lemon", "Banana"]], np.array([[0.5, 0.5]]))
    assert review.stored_queue(catalog, version) == (queue, False), "the previous queue, while a new one is made"


def missing_as_none(column) -> list:
    return [None if not isinstance(value, list) and value != value or value is None else value for value in column]


def test_a_page_of_the_stored_queue_is_the_page_select_shows(catalog):
    """The large-catalogue view reads one page of the queue; it must show what the whole table would."""
    ids = catalog.product_ids()
    vectors = np.random.default_rng(2).normal(size=(len(ids), 8))
    version = catalog.active_model_version().id
    queue = review.informative_queue(catalog, version, review.vectors_from((np.array(ids), vectors)), page_size=4)
    catalog.set_labels([(queue[0], "Banana"), (queue[5], "Lemon")], author="ana")  # labelled since
    catalog.archive_products([queue[2]], reason="duplicate")

    expected = review.select(review.review_table(catalog), queue=queue, page_size=4)
    for page in range(1, 6):
        rows, count = review.queue_page(catalog, queue, page, page_size=4)
        assert count == len(expected) == len(ids) - 1
        wanted = expected.iloc[(page - 1) * 4: page * 4]
        assert rows["product_id"].tolist() == wanted["product_id"].tolist(), page
        for column in ("label", "predicted_label", "confidence", "top_labels", "answer"):
            assert missing_as_none(rows[column]) == missing_as_none(wanted[column]), column
    assert review.queue_page(catalog, queue, 5, page_size=4)[0].empty, "past the last page"
    with pytest.raises(ValueError, match="at least 1"):
        review.queue_page(catalog, queue, 0)


def test_a_large_catalogue_queue_spreads_only_the_most_uncertain_and_still_orders_everything(catalog, monkeypatch):
    ids = catalog.product_ids()
    vectors = np.random.default_rng(3).normal(size=(len(ids), 8))
    lookup = review.vectors_from((np.array(ids), vectors))
    read = []
    counting = lambda product_ids: read.append(len(list(product_ids))) or lookup(product_ids)  # noqa: E731
    monkeypatch.setattr(review, "QUEUE_POOL", 3)
    version = catalog.active_model_version().id
    queue = review.informative_queue(catalog, version, counting, page_size=4)
    assert sorted(queue) == sorted(ids), "every product is in the queue once"
    assert max(read) <= 3, "only the pool's vectors (and a sample of the labelled ones) are read"
    table = review.review_table(catalog)
    unlabelled = table[table["label"].isna()]
    margins = {pid: abs(p[0] - p[1]) for pid, p in zip(unlabelled["product_id"], unlabelled["top_probabilities"])}
    assert set(queue[:3]) == set(sorted(margins, key=margins.get)[:3]), "the most uncertain come first"
    labels = catalog.current_labels()
    assert all(pid not in labels for pid in queue[:8]) and all(pid in labels for pid in queue[8:])


def test_a_filtered_page_from_the_database_is_the_page_select_shows(catalog, demo_dir):
    """A large catalogue filters and sorts in the database; every filter and order must show what the
    whole table would."""
    ids = catalog.product_ids()
    version = catalog.active_model_version().id
    catalog.store_predictions(version, ids[:6], [["Lemon", "Banana"]] * 3 + [["Banana", "Lemon"]] * 3,
                              np.array([[0.55, 0.45], [0.61, 0.39], [0.7, 0.3]] * 2),
                              new_category=[True, False, None, True, False, True])
    catalog.set_category_parents([("Lemon", "Citrus"), ("Citrus", "Fruit")])
    unpredicted = ingest.import_paths(catalog, [demo_dir / "Orange"]).added  # no prediction yet
    # Lower case sorts after upper case as in Python (PostgreSQL's locale collation would not).
    catalog.set_labels([(unpredicted[0], "Orange"), (ids[7], "apple")], author="ana")
    catalog.archive_products([ids[4]], reason="duplicate")
    everything = catalog.product_ids()
    lookup = review.vectors_from((np.array(everything), np.random.default_rng(4).normal(size=(len(everything), 8))))
    queue = review.informative_queue(catalog, version, lookup, page_size=4)
    catalog.set_labels([(queue[1], "Banana")], author="ana")  # labelled since the queue was made
    table = review.review_table(catalog)
    filters = [{}, {"predicted": ["Banana"]}, {"confidence_range": (0.5, 0.65)}, {"labelled": False},
               {"labelled": True}, {"disagreements_only": True}, {"new_category_only": True}, {"under": ["Citrus"]},
               {"under": ["Fruit"], "labelled": False}, {"predicted": ["Lemon"], "confidence_range": (0.0, 0.62)}]
    checked = 0
    for chosen in filters:
        where = review.review_filter(catalog, **chosen)
        for order in review.ORDERS:
            for stored in ([None, queue] if order == review.DEFAULT_ORDER else [None]):
                expected = review.select(table, order=order, page_size=4, vectors_of=lookup, queue=stored, **chosen)
                for page in (1, 2, 3):
                    rows, count = review.filtered_page(catalog, page, 4, order, where, queue=stored, vectors_of=lookup)
                    assert count == len(expected), (chosen, order)
                    wanted = expected.iloc[(page - 1) * 4: page * 4]
                    assert rows["product_id"].tolist() == wanted["product_id"].tolist(), (chosen, order, page)
                    for column in ("label", "predicted_label", "confidence", "answer", "new_category"):
                        assert missing_as_none(rows[column]) == missing_as_none(wanted[column]), (chosen, order)
                    checked += len(rows)
    assert checked > 300
    assert review.filtered_page(catalog, 1, 4, "newest", review.review_filter(catalog, predicted=["Kiwi"]))[1] == 0
    with pytest.raises(ValueError, match="order must be one of"):
        review.filtered_page(catalog, 1, 4, "alphabetical")


def test_a_large_catalogue_without_a_model_pages_its_default_order_from_the_database(workspace, demo_dir,
                                                                                     monkeypatch):
    catalog = Catalog(workspace)
    ingest.import_paths(catalog, [demo_dir / "Banana"])
    ingest.import_paths(catalog, [demo_dir / "Lemon"], label="Lemon")
    ingest.import_paths(catalog, [demo_dir / "Orange"])
    ids = catalog.product_ids()
    lookup = review.vectors_from((np.array(ids), np.random.default_rng(5).normal(size=(len(ids), 8))))
    table = review.review_table(catalog)
    rows_of = catalog.review_rows

    def page_rows(model_id, product_ids=None):
        assert product_ids is not None and len(product_ids) <= 4, "a page reads its own rows only"
        return rows_of(model_id, product_ids)

    monkeypatch.setattr(catalog, "review_rows", page_rows)
    for chosen in ({}, {"labelled": True}, {"labelled": False}):
        expected = review.select(table, page_size=4, vectors_of=lookup, **chosen)["product_id"].tolist()
        pages = [review.filtered_page(catalog, page, 4, where=review.review_filter(catalog, **chosen),
                                      vectors_of=lookup) for page in range(1, 8)]
        assert [pid for rows, _ in pages for pid in rows["product_id"]] == expected, chosen
        assert {count for _, count in pages} == {len(expected)}
    assert expected[0] not in catalog.current_labels(), "unlabelled products first"


def test_a_prediction_table_lists_the_products_asked_for_in_order_with_previews(catalog, demo_dir):
    import base64
    import io

    from PIL import Image

    ids = catalog.product_ids()
    catalog.set_category_parents([("Lemon", "Citrus"), ("Banana", "Fruit"), ("Citrus", "Fruit")])
    version = catalog.active_model_version().id
    catalog.store_predictions(version, ids[:2], [["Lemon", "Banana"], ["Banana", "Lemon"]],
                              np.array([[0.55, 0.45], [0.95, 0.05]]), new_category=[True, False])
    unpredicted = ingest.import_paths(catalog, [demo_dir / "Orange"]).added[0]
    asked = [ids[1], unpredicted, ids[0]]
    table = review.prediction_table(catalog, asked, names={ids[1]: "shelf <b>1</b>.jpg"}, threshold=0.7)
    assert table["product_id"].tolist() == asked
    assert table["prediction"].tolist()[::2] == ["Banana", "Fruit › ?"], "unsure of the fine category: coarse"
    assert missing_as_none(table["best_guess"]) == [None, None, "Lemon"]
    assert table["confidence"].tolist()[::2] == [0.95, 0.55] and table["new_category"].tolist()[::2] == [False, True]
    assert missing_as_none(table.loc[[1], ["prediction", "confidence", "new_category"]].iloc[0]) == [None] * 3
    assert table["file"].tolist() == ["shelf <b>1</b>.jpg", "", ""], "names as given, verbatim"
    for url in table["photo"]:
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as preview:
            assert preview.format == "JPEG" and max(preview.size) <= 96
    plain = review.prediction_table(catalog, [ids[0]])
    assert plain["file"].item() == catalog.get_product(ids[0]).filename
