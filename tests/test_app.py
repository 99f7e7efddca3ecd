"""Every page through Streamlit's AppTest, on an empty and on a populated workspace.

AppTest cannot upload files or make plotly selections; those paths are covered
through ``core`` (tests/test_pipeline.py) and the real-browser test (tests/test_browser.py).
"""

import pytest
from streamlit.testing.v1 import AppTest

from conftest import REPO

from core.catalog import Catalog
from core.demo import load_demo
from core.embeddings import embed_catalog
from core.head import HeadClassifier
from core.prediction import predict_catalog
from core.training import train_version

PAGES = ["pages/upload.py", "pages/review.py", "pages/train.py", "pages/explore.py", "pages/activity.py"]


def app(workspace, monkeypatch) -> AppTest:
    monkeypatch.setenv("PRODUCTLENS_WORKSPACE", str(workspace))
    at = AppTest.from_file(str(REPO / "app.py"), default_timeout=240)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture(scope="module")
def populated(tmp_path_factory, embedder):
    workspace = tmp_path_factory.mktemp("app-populated")
    catalog = Catalog(workspace)
    load_demo(catalog)
    embed_catalog(catalog, embedder)
    version = train_version(catalog, embedder, HeadClassifier(max_epochs=30), augmented_views=0)
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
    picks = [b for b in at.button if b.key and b.key.startswith("pick-")]
    assert len({b.key.split("-")[1] for b in picks}) == 12, "a page shows 12 cards"
    # Least confident first: the first card's product has the lowest confidence.
    catalog = Catalog(populated)
    first_product = int(picks[0].key.split("-")[1])
    confidences = [p["confidence"] for p in catalog.predictions(catalog.active_model_version()["id"]).values()]
    chosen = catalog.predictions(catalog.active_model_version()["id"])[first_product]["confidence"]
    assert chosen == pytest.approx(min(confidences))
    target = picks[1]
    target.click().run()
    assert not at.exception
    label = target.key.split("-", 2)[2]
    event = catalog.label_history(first_product)[0]
    assert (event.label, event.author, event.source) == (label, "ana", "human")
    undo = [b for b in at.button if b.label == "Undo last action"][0]
    undo.click().run()
    assert catalog.label_history(first_product)[0].label == event.previous_label


def test_review_filters(populated, monkeypatch):
    at = app(populated, monkeypatch)
    at.switch_page("pages/review.py").run()
    at.radio(key="review_status").set_value("unlabelled").run()
    assert not at.exception
    assert [m.value for m in at.metric if m.label == "Matching products"] == ["10"]


def test_train_page_retrains_and_compares(populated, monkeypatch):
    at = app(populated, monkeypatch)
    at.switch_page("pages/train.py").run()
    before = len(Catalog(populated).model_versions())
    [b for b in at.button if b.label == "Retrain now"][0].click().run()
    assert not at.exception, at.exception
    assert len(Catalog(populated).model_versions()) == before + 1
    assert any("trained" in s.value for s in at.success)
    assert any("Per-category recall" in s.value for s in at.subheader)


def test_explore_page_draws_the_map(populated, monkeypatch):
    at = app(populated, monkeypatch)
    at.switch_page("pages/explore.py").run()
    assert not at.exception, at.exception
    assert any("Draw a box" in c.value for c in at.caption)


def test_activity_page_lists_label_changes(populated, monkeypatch):
    Catalog(populated).set_labels([(1, "Checked-By-Dee")], author="dee")
    at = app(populated, monkeypatch)
    at.switch_page("pages/activity.py").run()
    assert not at.exception, at.exception
    table = at.dataframe[0].value
    assert table.iloc[0]["who"] == "dee" and table.iloc[0]["to"] == "Checked-By-Dee"
