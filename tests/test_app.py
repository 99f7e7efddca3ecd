"""Every page through Streamlit's AppTest, on an empty and on a populated workspace.

AppTest cannot upload files or make plotly selections; those paths are covered
through ``core`` (tests/test_pipeline.py) and the real-browser test (tests/test_browser.py).
"""

import json
import re

import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO, embedded_demo
from core.curation import review
from core.model.head import HeadClassifier
from core.model.prediction import predict_catalog
from core.model.training import train_version
from core.storage.catalog import Catalog

PAGES = ["pages/upload.py", "pages/review.py", "pages/train.py", "pages/explore.py", "pages/activity.py",
         "pages/suspicious.py", "pages/duplicates.py", "pages/similar.py", "pages/team.py"]


def app(workspace, monkeypatch) -> AppTest:
    monkeypatch.setenv("PRODUCTLENS_WORKSPACE", str(workspace))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=240)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture(scope="module")
def populated(tmp_path_factory, embedder):
    workspace = embedded_demo(tmp_path_factory, embedder, "app-populated")
    catalog = Catalog(workspace)
    version = train_version(catalog, embedder, HeadClassifier(), augmented_views=0)
    predict_catalog(catalog, version)
    return workspace


def texts(at) -> str:
    return " ".join(str(e.value) for e in list(at.markdown) + list(at.caption) + list(at.info)
                    + list(at.title) + list(at.success) + list(at.subheader))


def test_home_on_an_empty_workspace_offers_the_demo(tmp_path, monkeypatch):
    at = app(tmp_path / "ws", monkeypatch)
    assert "empty" in texts(at)
    demo = [b for b in at.button if b.label == "Load demo catalogue"]
    assert demo
    demo[0].click().run()
    assert not at.exception
    status = Catalog(tmp_path / "ws").status()
    assert status["products"] == 80 and status["labelled"] == 70 and status["categories"] == 10
    from core.features import Embedder

    # Features are computed on loading, so the first training is only training.
    assert Catalog(tmp_path / "ws").count_embeddings(Embedder().key) == 80
    assert any("computed their features in" in t.value for t in at.toast)
    assert [m.value for m in at.metric][:4] == ["80", "70", "10", "10"]


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_on_an_empty_workspace(tmp_path, monkeypatch, page):
    at = app(tmp_path / "ws", monkeypatch)
    at.switch_page(page).run()
    assert not at.exception, at.exception


def test_home_on_a_populated_workspace(populated, monkeypatch):
    at = app(populated, monkeypatch)
    values = {m.label: m.value for m in at.metric}
    assert values["Products"] == "80" and values["Awaiting review"] == "10"
    assert values["Active model"].startswith("v")


def test_review_one_click_correction_is_stored_with_the_author(populated, monkeypatch):
    at = app(populated, monkeypatch)
    at.text_input(key="author_input").input("ana").run()
    at.switch_page("pages/review.py").run()
    assert not at.exception, at.exception
    cards = [int(box.key.split("-")[1]) for box in at.checkbox if box.key and box.key.startswith("select-")]
    assert len(set(cards)) == 12, "a page shows 12 cards"
    # The cards are the review queue in its default (active-learning) order, as core computes it.
    catalog = Catalog(populated)
    version = catalog.active_model_version()
    queue = review.select(review.review_table(catalog), order=review.DEFAULT_ORDER,
                          features=catalog.embeddings(version.embedding_key), page_size=12)
    shown = list(dict.fromkeys(cards))
    # Cards fill a 4-column grid row by row; the page lists them column by column.
    assert shown[0] == queue["product_id"].iloc[0]
    assert sorted(shown) == sorted(queue["product_id"].tolist()[:12])
    labels = catalog.current_labels()
    assert all(pid not in labels for pid in queue["product_id"].tolist()[:10]), "unlabelled products first"
    first_product = shown[0]  # the first card has the keyboard's focus: its buttons have fixed keys
    at.button(key="focus-pick-2").click().run()
    assert not at.exception
    label = catalog.predictions(version.id)[first_product]["labels"][1]  # the card's 2nd suggestion
    event = catalog.label_history(first_product)[0]
    assert (event.label, event.author, event.source) == (label, "ana", "human")
    undo = at.button(key="undo")
    undo.click().run()
    assert catalog.label_history(first_product)[0].label == event.previous_label


def test_a_large_catalogues_review_reads_one_page_of_the_stored_queue(populated, monkeypatch):
    """Above review.PAGED_FROM products (lowered here) the default view never reads every product's row."""
    monkeypatch.setattr(review, "PAGED_FROM", 1)
    whole_table_reads = []
    real = review.review_table
    monkeypatch.setattr(review, "review_table", lambda catalog, *args, **kwargs: (
        whole_table_reads.append(1) if kwargs.get("product_ids") is None else None) or real(catalog, *args, **kwargs))
    at = app(populated, monkeypatch)
    at.text_input(key="author_input").input("ana").run()
    at.switch_page("pages/review.py").run()
    assert not at.exception, at.exception
    catalog = Catalog(populated)
    version = catalog.active_model_version()
    queue, current = review.stored_queue(catalog, version.id)
    assert current
    whole_table_reads.clear()  # making the queue (once per version) reads the table; a render must not
    at.run()
    assert not whole_table_reads, "a render of the default view read every product's row"

    def cards():
        return list(dict.fromkeys(int(box.key.split("-")[1]) for box in at.checkbox
                                  if box.key and box.key.startswith("select-")))

    first_page = review.queue_page(catalog, queue, 1)[0]["product_id"].tolist()
    assert sorted(cards()) == sorted(first_page) and cards()[0] == first_page[0]
    assert [m.value for m in at.metric if m.label == "Matching products"] == [str(len(queue))]
    at.button(key="focus-pick-1").click().run()  # labels the first card: it moves behind the unlabelled ones
    assert not at.exception and not whole_table_reads
    after = review.queue_page(catalog, queue, 1)[0]
    assert sorted(cards()) == sorted(after["product_id"].tolist()) and after["product_id"].iloc[0] == first_page[1]
    moved = after["product_id"].tolist().index(first_page[0])
    assert after["label"].iloc[:moved].isna().all(), "the card labelled moved behind every unlabelled one"
    at.number_input(key="review_page").set_value(2).run()
    assert sorted(cards()) == sorted(review.queue_page(catalog, queue, 2)[0]["product_id"].tolist())
    at.number_input(key="review_page").set_value(1).run()
    at.radio(key="review_status").set_value("unlabelled").run()  # the database filters: still one page read
    assert not at.exception and not whole_table_reads
    unlabelled = review.review_filter(catalog, labelled=False)
    shown, matching = review.filtered_page(catalog, 1, 12, review.DEFAULT_ORDER, unlabelled, queue)
    assert sorted(cards()) == sorted(shown["product_id"]) and cards()[0] == shown["product_id"].iloc[0]
    assert shown["label"].isna().all()
    assert [m.value for m in at.metric if m.label == "Matching products"] == [str(matching)]
    at.selectbox(key="review_order").set_value("least confident").run()
    assert not at.exception and not whole_table_reads
    least = review.select(real(catalog), order="least confident", labelled=False)["product_id"].tolist()
    assert sorted(cards()) == sorted(least[:12]) and cards()[0] == least[0]
    at.button(key="undo").click().run()
    assert catalog.label_history(first_page[0])[0].author == "ana" and catalog.current_label(first_page[0]) is None


def test_review_filters(populated, monkeypatch):
    at = app(populated, monkeypatch)
    at.switch_page("pages/review.py").run()
    at.radio(key="review_status").set_value("unlabelled").run()
    assert not at.exception
    assert [m.value for m in at.metric if m.label == "Matching products"] == ["10"]
    at.toggle(key="review_new_category").set_value(True).run()
    assert not at.exception, at.exception
    flagged = [p for p in Catalog(populated).predictions(Catalog(populated).active_model_version().id).values()
               if p["new_category"]]
    assert [m.value for m in at.metric if m.label == "Matching products"] == [str(len(flagged))]


def test_train_page_retrains_and_compares(populated, monkeypatch):
    at = app(populated, monkeypatch)
    at.switch_page("pages/train.py").run()
    before = len(Catalog(populated).model_versions())
    if before == 1:  # a first version: recall only, no empty "before"/"change" columns
        assert list(at.dataframe[0].value.columns) == ["category", "recall"]
    [b for b in at.button if b.label == "Retrain now"][0].click().run()
    assert not at.exception, at.exception
    assert len(Catalog(populated).model_versions()) == before + 1
    assert any("trained" in s.value for s in at.success)
    assert any("Per-category recall" in s.value for s in at.subheader)
    assert any("Is the confidence honest?" in s.value for s in at.subheader)
    assert any("Expected calibration error" in c.value for c in at.caption), "reliability diagram's caption"
    delta = at.metric[0].delta
    assert delta == "no change" or re.fullmatch(r"[+-]\d+\.\d%", delta) and delta not in ("+0.0%", "-0.0%"), delta
    changes = at.dataframe[0].value
    assert list(changes.columns) == ["category", "before", "after", "change"]
    assert not changes["change"].isin(["None", "+0.0%", "-0.0%"]).any()


def test_explore_page_draws_the_map(populated, monkeypatch):
    at = app(populated, monkeypatch)
    at.switch_page("pages/explore.py").run()
    assert not at.exception, at.exception
    assert any("click a point to open that product" in c.value for c in at.caption)


def test_retraining_draws_the_map_ahead_and_explore_only_reads_it(populated, monkeypatch):
    """A fresh server's first Explore visit must not pay for UMAP: training drew the map already."""
    import threading

    import pages.shared
    from core.curation import projection

    for drawn in (populated / "cache").glob("umap-*.npy"):
        drawn.unlink()
    monkeypatch.setattr(pages.shared, "WARM_UP_DELAY_S", 0.0)
    at = app(populated, monkeypatch)
    at.switch_page("pages/train.py").run()
    [b for b in at.button if b.label == "Retrain now"][0].click().run()
    assert not at.exception, at.exception
    for thread in threading.enumerate():  # started by the page itself, not by this test
        if thread.name == "productlens-map-ahead":
            thread.join(timeout=300)
    assert list((populated / "cache").glob("umap-*.npy")), "the map is drawn without opening Explore"

    def no_drawing(*_args, **_kwargs):
        raise AssertionError("Explore drew the map again")

    monkeypatch.setattr(projection, "project", no_drawing)
    fresh = app(populated, monkeypatch)
    fresh.switch_page("pages/explore.py").run()
    assert not fresh.exception, fresh.exception
    assert any("click a point to open that product" in c.value for c in fresh.caption)


def test_train_page_fine_tunes_and_lists_the_version_as_fine_tuned(populated, monkeypatch, tmp_path):
    import shutil

    workspace = tmp_path / "copy"  # the fine-tuned version stays out of the other tests' workspace
    shutil.copytree(populated, workspace)
    at = app(workspace, monkeypatch)
    at.switch_page("pages/train.py").run()
    [b for b in at.button if b.label == "Fine-tune and retrain"][0].click().run()
    assert not at.exception, at.exception
    version = Catalog(workspace).active_model_version()
    assert version.metrics["fine_tuned"], "the new active version is the fine-tuned one"
    assert any(f"Model v{version.id} fine-tuned and activated" in s.value for s in at.success)
    assert any("fine-tuned" in c.value for c in at.caption), "the version list marks it"


def test_activity_page_lists_label_changes(populated, monkeypatch):
    Catalog(populated).set_labels([(1, "Checked-By-Dee")], author="dee")
    at = app(populated, monkeypatch)
    at.switch_page("pages/activity.py").run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert table.iloc[0]["who"] == "dee" and table.iloc[0]["to"] == "Checked-By-Dee"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", table.iloc[0]["when"]), "no ISO T or milliseconds"
    assert table.iloc[0]["how"] == "correction"
    review.undo_last_action(Catalog(populated), author="dee")
    at.run()
    table = at.dataframe[0].value
    assert table.iloc[0]["how"] == "undo" and table.iloc[0]["from"] == "Checked-By-Dee"
    imports = table[table["how"] == "import"]
    assert len(imports) and (imports["who"] == "").all() and (imports["from"] == "(unlabelled)").all()
    assert not table.isna().any().any() and "None" not in table.astype(str).to_numpy()


def test_suspicious_labels_page_finds_and_fixes_an_injected_error(populated, monkeypatch):
    catalog = Catalog(populated)
    banana = next(pid for pid, label in catalog.current_labels().items() if label == "Banana")
    catalog.set_labels([(banana, "Lemon")], author="tired")
    at = app(populated, monkeypatch)
    at.switch_page("pages/suspicious.py").run()
    [b for b in at.button if b.label == "Find suspicious labels"][0].click().run()
    assert not at.exception, at.exception
    fix = [b for b in at.button if b.key == f"fix-{banana}"]
    assert fix and fix[0].label == "Use Banana"
    fix[0].click().run()
    assert not at.exception, at.exception
    assert catalog.current_label(banana) == "Banana"
    assert catalog.label_history(banana)[0].source == "human"
    assert not [b for b in at.button if b.key == f"fix-{banana}"], "a fixed label leaves the list"


def test_duplicates_page_groups_keeps_one_and_restores(populated, monkeypatch):
    at = app(populated, monkeypatch)
    at.switch_page("pages/duplicates.py").run()
    assert not at.exception, at.exception
    at.slider[0].set_value(0.85).run()
    groups = int([m.value for m in at.metric if m.label == "Groups"][0])
    assert groups > 0, "consecutive shots of one product are near-duplicates at 0.85"
    catalog = Catalog(populated)
    before = catalog.count_products()
    [s for s in at.selectbox if s.label == "Action"][0].set_value("Keep one, archive the others")
    [b for b in at.button if b.label == "Apply"][0].click().run()  # the first group's Apply
    assert not at.exception, at.exception
    archived = catalog.archived()
    assert archived and catalog.count_products() == before - len(archived)
    for _ in range(len(archived)):
        # Each click reruns the page, which then lists one archived product fewer.
        [b for b in at.button if b.label == "Restore"][0].click().run()
        assert not at.exception, at.exception
    assert catalog.archived() == [] and catalog.count_products() == before


def test_a_big_catalogues_duplicates_page_shows_the_kept_groups_and_finds_them_again_on_request(
        populated, monkeypatch, tmp_path):
    import shutil

    from core.curation import duplicates

    monkeypatch.setattr(duplicates, "APPROXIMATE_FROM", 10)  # the demo's 80 products count as many
    workspace = tmp_path / "copy"  # archiving stays out of the other tests' workspace
    shutil.copytree(populated, workspace)
    at = app(workspace, monkeypatch)
    at.switch_page("pages/duplicates.py").run()
    at.slider[0].set_value(0.85).run()
    assert not at.exception, at.exception
    assert not [b for b in at.button if b.label == "Find again"], "groups just found are current"
    groups = int([m.value for m in at.metric if m.label == "Groups"][0])
    assert groups > 0 and list((workspace / "cache").glob("duplicates-*.npz"))
    [s for s in at.selectbox if s.label == "Action"][0].set_value("Keep one, archive the others")
    [b for b in at.button if b.label == "Apply"][0].click().run()
    assert not at.exception, at.exception
    # Kept groups come back at once after the archive, saying they are older than the catalogue.
    assert any("products were added or archived since" in c.value for c in at.caption)
    [b for b in at.button if b.label == "Find again"][0].click().run()
    assert not at.exception, at.exception
    assert not [b for b in at.button if b.label == "Find again"]
    assert int([m.value for m in at.metric if m.label == "Groups"][0]) < groups


def test_similar_products_page_lists_neighbours_but_not_the_product_itself(populated, monkeypatch):
    at = app(populated, monkeypatch)
    at.switch_page("pages/similar.py").run()
    assert not at.exception, at.exception
    at.selectbox(key="similar_product").set_value(5).run()
    assert not at.exception, at.exception
    scores = [c.value for c in at.caption if "#" in c.value and "·" in c.value]
    assert len(scores) == 10 and not any(" · #5 " in score for score in scores), scores[:2]
    values = [float(score.split("**")[1]) for score in scores]
    assert max(values) < 1.0, "no exact self-match"


def test_a_big_catalogues_similar_page_searches_for_the_product_instead_of_listing_all(populated, monkeypatch):
    from pages import shared

    monkeypatch.setattr(shared, "PICKER_LISTS_UP_TO", 10)  # the demo's 80 products count as many
    product = Catalog(populated).get_product(5)
    at = app(populated, monkeypatch)
    at.switch_page("pages/similar.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="similar_product").options == []
    at.text_input(key="similar_search").set_value(product.filename[2:-4].upper()).run()
    assert f"#5 {product.filename}" in at.selectbox(key="similar_product").options
    at.text_input(key="similar_search").set_value("5").run()
    assert at.selectbox(key="similar_product").options[0] == f"#5 {product.filename}"
    at.selectbox(key="similar_product").set_value(5).run()
    assert not at.exception, at.exception
    assert len([c.value for c in at.caption if "#" in c.value and "·" in c.value]) == 10


def test_similar_products_leave_out_a_product_archived_since_the_last_search(populated, monkeypatch, tmp_path):
    import shutil

    workspace = tmp_path / "copy"  # archiving stays out of the other tests' workspace
    shutil.copytree(populated, workspace)
    at = app(workspace, monkeypatch)
    at.switch_page("pages/similar.py").run()
    at.selectbox(key="similar_product").set_value(5).run()
    first = [c.value for c in at.caption if "#" in c.value and "·" in c.value][0]
    nearest = int(first.split(" · #")[1].split(" ")[0])
    Catalog(workspace).archive_products([nearest], reason="duplicate")
    at.run()
    assert not at.exception, at.exception
    scores = [c.value for c in at.caption if "#" in c.value and "·" in c.value]
    assert scores and not any(f" · #{nearest} " in score for score in scores), scores[:2]


def test_user_text_is_shown_as_plain_text_not_markdown(populated, monkeypatch):
    from pages.shared.text import plain

    assert plain("**Sale** [win](http://x.example) <b>") == r"\*\*Sale\*\* \[win\](http\://x.example) \<b\>"
    assert plain("- 1. item") == r"\- 1. item" and plain("3. Milk") == r"3\. Milk"
    catalog = Catalog(populated)
    at = app(populated, monkeypatch)
    at.switch_page("pages/review.py").run()
    # A labelled product on the first page of labelled ones (a relabel keeps it there, while an unlabelled
    # one would leave the queue's first page), whatever order earlier tests' edits gave the queue.
    at.radio(key="review_status").set_value("labelled").run()
    product = next(int(box.key.split("-", 1)[1]) for box in at.checkbox if str(box.key).startswith("select-"))
    original = catalog.current_label(product)
    catalog.set_labels([(product, "**Sale** [win](http://x.example)")], author="mallory")
    try:
        at.run()
        assert not at.exception, at.exception
        shown = [m.value for m in at.markdown if "Sale" in m.value]
        assert shown and all(r"\*\*Sale\*\* \[win\]" in value for value in shown), shown
    finally:
        catalog.set_labels([(product, original)], author="test")


def test_a_long_typed_category_name_is_a_message_not_a_traceback(populated, monkeypatch):
    # AppTest cannot type a new option into a selectbox; the rename form takes typed text.
    at = app(populated, monkeypatch)
    at.switch_page("pages/review.py").run()
    before = Catalog(populated).current_labels()
    at.text_input[-1].input("x" * 300)
    [b for b in at.button if b.label == "Rename / merge"][0].click().run()
    assert not at.exception, at.exception
    assert any("at most 200 characters" in error.value for error in at.error)
    assert Catalog(populated).current_labels() == before


# -- accounts: sign-in on every page, roles checked where the action runs ------------------------------

@pytest.fixture()
def team(populated, tmp_path):
    """A copy of the populated workspace (through backup and restore) with three accounts."""
    from core.security import add_user
    from core.storage.backup import backup, restore

    workspace = restore(backup(Catalog(populated, create=False), tmp_path / "copy.zip"), tmp_path / "team").workspace
    catalog = Catalog(workspace)
    for name, role in [("root", "admin"), ("vera", "viewer"), ("lea", "labeller")]:
        add_user(catalog, name, f"{name}-password", role)
    return workspace


def sign_in(at, name, password):
    [field for field in at.text_input if field.label == "Account name"][0].input(name)
    [field for field in at.text_input if field.label == "Password"][0].input(password)
    [button for button in at.button if button.label == "Sign in"][0].click().run()
    assert not at.exception, at.exception
    return at


def test_every_page_asks_to_sign_in_once_the_workspace_has_accounts(team, monkeypatch):
    at = app(team, monkeypatch)
    for page in [None] + PAGES:
        if page:
            at.switch_page(page).run()
        assert [t.value for t in at.title] == ["Sign in to ProductLens"], page
        assert not at.metric and not [b for b in at.button if b.key and b.key.startswith("pick-")]
    sign_in(at, "root", "wrong-password")
    assert [e.value for e in at.error] == ["wrong account name or password"]
    sign_in(at, "root", "root-password")
    assert at.title[0].value == "Team" and not at.error, "the page asked for (the last one) opens after signing in"
    home = sign_in(app(team, monkeypatch), "root", "root-password")
    assert "Signed in as root · admin" in texts(home) and [m.label for m in home.metric][0] == "Products"


def test_a_viewer_looks_but_cannot_label_and_a_demotion_applies_at_once(team, monkeypatch):
    from core.security import change_role

    at = sign_in(app(team, monkeypatch), "vera", "vera-password")
    at.switch_page("pages/review.py").run()
    assert "labelling needs the labeller role" in texts(at)
    picks = [b for b in at.button if b.key and b.key.startswith("pick-")]
    assert picks and all(b.disabled for b in picks)
    # Lea's page is open with enabled buttons when an admin makes her a viewer: her next click is refused.
    lea = sign_in(app(team, monkeypatch), "lea", "lea-password")
    lea.switch_page("pages/review.py").run()
    pick = [b for b in lea.button if b.key and b.key.startswith("pick-")][1]
    assert not pick.disabled
    change_role(Catalog(team), "lea", "viewer")
    before = Catalog(team).current_labels()
    pick.click().run()
    assert Catalog(team).current_labels() == before
    assert any("lea is a viewer: label needs the labeller role" in e.value.replace("\\", "") for e in lea.error)


def test_a_labeller_labels_as_their_account_but_cannot_train(team, monkeypatch):
    at = sign_in(app(team, monkeypatch), "lea", "lea-password")
    assert not [field for field in at.text_input if field.key == "author_input"], "no free-text name to spoof"
    at.switch_page("pages/review.py").run()
    pick = [b for b in at.button if b.key and b.key.startswith("pick-")][1]
    pick.click().run()
    product = int(pick.key.split("-")[1])
    assert Catalog(team).label_history(product)[0].author == "lea"
    at.switch_page("pages/train.py").run()
    assert [b for b in at.button if b.label == "Retrain now"][0].disabled
    assert all(b.disabled for b in at.button if b.label == "Activate")
    assert "Training and activating models is for admins" in texts(at)


def test_without_accounts_the_app_says_anyone_can_change_everything(populated, monkeypatch):
    at = app(populated, monkeypatch)
    assert "No accounts: anyone who opens this app can change everything" in texts(at)


def test_chart_legends_and_hovers_show_html_in_names_as_text(populated, monkeypatch):
    catalog = Catalog(populated)
    product = catalog.product_ids()[0]
    original = catalog.current_label(product)
    hostile = '<a href="http://evil.example">Lemon</a>'
    catalog.set_labels([(product, hostile)], author="mallory")
    try:
        at = app(populated, monkeypatch)
        at.switch_page("pages/explore.py").run()
        assert not at.exception, at.exception
        spec = json.loads(at.get("plotly_chart")[0].proto.spec)
        names = [trace["name"] for trace in spec["data"]]
        assert '&lt;a href="http://evil.example"&gt;Lemon&lt;/a&gt;' in names, names
        assert not any("<a" in json.dumps(trace) for trace in spec["data"]), "no raw tag anywhere in the traces"
    finally:
        catalog.set_labels([(product, original)], author="test")


def test_an_admin_adds_a_colleague_and_changes_roles_on_the_team_page(team, monkeypatch):
    from core.security import authenticate

    at = sign_in(app(team, monkeypatch), "root", "root-password")
    at.switch_page("pages/team.py").run()
    assert not at.exception, at.exception
    [f for f in at.text_input if f.label == "Account name"][0].input("[reset](http://evil.example)")
    [f for f in at.text_input if f.label == "First password"][0].input("colleague-pw")
    [s for s in at.selectbox if s.label == "Role"][0].select("labeller")
    [b for b in at.button if b.label == "Add"][0].click().run()
    assert not at.exception, at.exception
    assert authenticate(Catalog(team), "[reset](http://evil.example)", "colleague-pw").role == "labeller"
    assert any(r"\[reset\](http\://evil.example)" in t.value for t in at.get("toast")), "shown as plain text"
    [s for s in at.selectbox if s.label == "Account"][0].select("lea")
    [s for s in at.selectbox if s.label == "New role"][0].select("viewer")
    [b for b in at.button if b.label == "Apply"][0].click().run()
    assert {u["name"]: u["role"] for u in Catalog(team).users()}["lea"] == "viewer"

    viewer = sign_in(app(team, monkeypatch), "vera", "vera-password")
    viewer.switch_page("pages/team.py").run()
    assert "Adding people and changing roles is for admins." in texts(viewer)
    assert not [b for b in viewer.button if b.label == "Add"]


def test_a_damaged_workspace_is_a_short_message_without_server_paths(tmp_path, monkeypatch, demo_dir):
    from core.storage import ingest

    workspace = tmp_path / "ws"
    catalog = Catalog(workspace)
    ingest.import_paths(catalog, [demo_dir / "Lemon"])
    catalog.close()  # (an open connection would write its log back into the file when collected)
    (workspace / "catalog.sqlite").write_bytes(b"")
    for page in [None, "pages/review.py"]:
        monkeypatch.setenv("PRODUCTLENS_WORKSPACE", str(workspace))
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=240)
        at.run()
        if page:
            at.switch_page(page).run()
        assert not at.exception, at.exception
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and "is empty (0 bytes)" in errors[0] and "restore" in errors[0], errors
        assert str(tmp_path) not in errors[0], "no server path shown to visitors"
    assert (workspace / "catalog.sqlite").stat().st_size == 0


def test_a_category_tree_from_the_parent_picker_filters_review_and_sums_the_confusion_matrix(
        populated, monkeypatch, tmp_path):
    import shutil

    workspace = tmp_path / "tree"
    shutil.copytree(populated, workspace)
    catalog = Catalog(workspace)
    # AppTest cannot type a new option into a selectbox (the browser can): the first two nodes come from core.
    catalog.set_category_parents([("Apple", "Fruit"), ("Carrots", "Orange")])
    at = app(workspace, monkeypatch)
    at.switch_page("pages/review.py").run()
    for child, parent in [("Granny-Smith", "Apple"), ("Banana", "Fruit"), ("Lemon", "Fruit"), ("Carrots", None)]:
        at.selectbox(key="parent-child").set_value(child)
        at.selectbox(key="parent-parent").set_value(parent)
        [b for b in at.button if b.label == "Set parent"][0].click().run()
        assert not at.exception, at.exception
    assert catalog.category_parents() == {"Granny-Smith": "Apple", "Apple": "Fruit", "Banana": "Fruit",
                                          "Lemon": "Fruit"}
    assert any(toast.value == "Carrots is now a top-level category." for toast in at.toast)
    at.multiselect(key="review_under").set_value(["Fruit"]).run()
    table = review.review_table(catalog)
    fruit = table[table["within"].map(lambda nodes: "Fruit" in nodes)]
    assert [m.value for m in at.metric if m.label == "Matching products"] == [str(len(fruit))]
    assert 0 < len(fruit) < len(table)

    at.switch_page("pages/train.py").run()
    [b for b in at.button if b.label == "Retrain now"][0].click().run()
    assert not at.exception, at.exception
    levels = catalog.active_model_version().metrics["levels"]
    assert [row["level"] for row in levels] == [0, 1, 2]
    assert any("Validation accuracy by level" in c.value for c in at.caption)
    at.radio(key="train_level").set_value(0).run()
    assert not at.exception, at.exception
    heatmap = json.loads(at.get("plotly_chart")[0].proto.spec)["data"][0]
    assert "Fruit" in heatmap["x"] and "Granny-Smith" not in heatmap["x"], "level 0 sums the apples into Fruit"


def test_the_whole_app_on_postgresql(tmp_path, monkeypatch, postgres_server):
    """Demo, retrain, a correction with its author, and every page, with the catalogue on a PostgreSQL server."""
    url = postgres_server.new_database()
    try:
        monkeypatch.setenv("PRODUCTLENS_DATABASE", url)
        workspace = tmp_path / "ws"
        at = app(workspace, monkeypatch)
        at.text_input(key="author_input").input("ana").run()
        [b for b in at.button if b.label == "Load demo catalogue"][0].click().run()
        assert not at.exception, at.exception
        catalog = Catalog(workspace)
        assert not catalog.is_sqlite and not (workspace / "catalog.sqlite").exists()
        assert catalog.status()["products"] == 80
        at.switch_page("pages/train.py").run()
        [b for b in at.button if b.label == "Retrain now"][0].click().run()
        assert not at.exception, at.exception
        assert catalog.active_model_version() is not None
        at.switch_page("pages/review.py").run()
        at.button(key="focus-pick-2").click().run()
        assert not at.exception, at.exception
        event = catalog.label_history(limit=1)[0]
        assert (event.author, event.source) == ("ana", "human")
        for page in PAGES:
            at.switch_page(page).run()
            assert not at.exception, (page, at.exception)
    finally:
        postgres_server.drop(url)


def test_upload_results_table_and_an_upload_whose_every_file_was_refused(populated, monkeypatch):
    """AppTest cannot send files: the page is given the result an upload leaves in the session."""
    from core.jobs.pipeline import UploadResult
    from core.storage.ingest import ImportReport, Rejected
    from pages.shared import state

    catalog = Catalog(populated)
    at = app(populated, monkeypatch)
    at.switch_page("pages/upload.py")
    refused = ImportReport(rejected=[Rejected("notes.txt", "not an image")])
    at.session_state[state.LAST_UPLOAD] = UploadResult(refused)
    at.run()
    assert not at.exception, at.exception
    assert not [i for i in at.info if "No model yet" in i.value], "a model exists: nothing was uploaded, that is all"
    assert [frame.value["file"].tolist() for frame in at.dataframe] == [["notes.txt"]]

    again = catalog.product_ids()[:3]  # photos already in the catalogue come back with their predictions
    names = {pid: f"shelf-{pid}.jpg" for pid in again}
    at.session_state[state.LAST_UPLOAD] = UploadResult(
        ImportReport(duplicates=list(zip(names.values(), again)), product_ids=again, names=names), product_ids=again)
    at.run()
    assert not at.exception, at.exception
    shown = at.dataframe[-1].value
    predictions = catalog.predictions(catalog.active_model_version().id, again)
    assert shown["file"].tolist() == list(names.values())
    assert shown["prediction"].tolist() == [predictions[pid]["label"] for pid in again]
    assert shown["confidence"].tolist() == pytest.approx([100 * predictions[pid]["confidence"] for pid in again])
