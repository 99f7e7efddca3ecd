"""Shared fixtures: real photos from assets/demo, throw-away workspaces, one real backbone."""

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The suite embeds the demo photos in dozens of workspaces: it runs on the fastest offline
# backbone (same code path, ~3x less work per photo). The default composite backbone has
# its own tests (test_backbones.py, test_embeddings.py) with real weights.
os.environ.setdefault("PRODUCTLENS_BACKBONE", "efficientnet_lite0")

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "assets" / "demo"

# ImageNet class index of the first photo of each demo category that ImageNet knows.
IMAGENET_CHECKS = {
    "Banana": 954,
    "Lemon": 951,
    "Granny-Smith": 948,
    "Orange": 950,
    "Pineapple": 953,
}


def demo_photos(category: str) -> list[Path]:
    return sorted((DEMO / category).glob("*.jpg"))


def imagenet_check_photo(category: str) -> Path:
    """The photo of ``category`` that the demo README promises ImageNet recognises."""
    marker = {"Banana": "Banana_008", "Lemon": "Lemon_013", "Granny-Smith": "Granny-Smith_037",
              "Orange": "Orange_037", "Pineapple": "Pineapple_018"}[category]
    return DEMO / category / f"{marker}.jpg"


@pytest.fixture(autouse=True)
def _keep_the_main_module():
    """Streamlit's AppTest runs app.py as ``__main__`` and leaves it there: a process spawned later
    (tests/test_concurrency.py's writers) would run app.py again on start. Put pytest's back."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return DEMO


@pytest.fixture
def workspace(tmp_path) -> Path:
    return tmp_path / "workspace"


@pytest.fixture(scope="session")
def demo_split(tmp_path_factory) -> tuple[Path, Path]:
    """The demo catalogue split into train (6 per category) and test (2 per category) trees."""
    root = tmp_path_factory.mktemp("demo_split")
    for category_dir in sorted(p for p in DEMO.iterdir() if p.is_dir()):
        photos = sorted(category_dir.glob("*.jpg"))
        for split, chosen in (("train", photos[:6]), ("test", photos[6:])):
            target = root / split / category_dir.name
            target.mkdir(parents=True)
            for photo in chosen:
                shutil.copy(photo, target / photo.name)
    return root / "train", root / "test"


@pytest.fixture(scope="session")
def embedder():
    """The real default backbone with ImageNet weights, loaded once for the whole run."""
    from core.features.embeddings import Embedder

    return Embedder()


def embedded_demo(tmp_path_factory, embedder, name: str) -> Path:
    """A new workspace holding the demo catalogue with its features computed (for module-scoped fixtures)."""
    from core.features.embeddings import embed_catalog
    from core.storage.catalog import Catalog
    from core.storage.demo import load_demo

    workspace = tmp_path_factory.mktemp(name)
    catalog = Catalog(workspace)
    load_demo(catalog)
    embed_catalog(catalog, embedder)
    return workspace


# -- both databases -------------------------------------------------------------
# A test that uses the ``database`` fixture (directly or through
# ``pytestmark = pytest.mark.usefixtures("database")``) runs once on SQLite and once on
# a real PostgreSQL server, unless it is marked ``sqlite_only`` (it checks a SQLite file).
def pytest_generate_tests(metafunc):
    if "database" in metafunc.fixturenames:
        sqlite_only = metafunc.definition.get_closest_marker("sqlite_only") is not None
        metafunc.parametrize("database", ["sqlite"] if sqlite_only else ["sqlite", "postgresql"], indirect=True)


@pytest.fixture(scope="session")
def postgres_server():
    import postgres_server

    try:
        server = postgres_server.start()
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)
    yield server
    server.close()


@pytest.fixture
def database(request, monkeypatch):
    """``"sqlite"`` or the URL of a new PostgreSQL database; ``Catalog()`` (and child processes) open it."""
    if request.param == "sqlite":
        monkeypatch.delenv("PRODUCTLENS_DATABASE", raising=False)
        yield "sqlite"
        return
    server = request.getfixturevalue("postgres_server")
    url = server.new_database()
    monkeypatch.setenv("PRODUCTLENS_DATABASE", url)
    yield url
    server.drop(url)
