"""Choosing the catalogue's database, and what PostgreSQL adds: one workspace folder per catalogue."""

import pytest
from test_catalog import add

from conftest import demo_photos
from core.errors import CatalogError
from core.storage.catalog import Catalog
from core.storage.database import database_url, display_url


def test_the_database_comes_from_the_argument_then_the_environment_then_sqlite(monkeypatch):
    monkeypatch.delenv("PRODUCTLENS_DATABASE", raising=False)
    assert database_url() == "sqlite"
    monkeypatch.setenv("PRODUCTLENS_DATABASE", "postgresql://ana:pw@db.example:5432/catalogue")
    assert database_url() == "postgresql+psycopg://ana:pw@db.example:5432/catalogue", "always psycopg 3"
    assert database_url("sqlite") == "sqlite"
    assert display_url(database_url()) == "postgresql+psycopg://ana:***@db.example:5432/catalogue"


def test_an_unreachable_database_server_is_a_one_line_error(workspace):
    with pytest.raises(CatalogError, match="cannot reach the PostgreSQL catalogue at postgresql"
                       r"\+psycopg://ana:\*\*\*@127.0.0.1:9/catalogue") as error:
        Catalog(workspace, database="postgresql://ana:secret@127.0.0.1:9/catalogue")
    assert "secret" not in str(error.value), "the password never shows"
    with pytest.raises(CatalogError, match="must be 'sqlite'"):
        Catalog(workspace, database="mysql://ana@db/catalogue")


def test_a_postgresql_catalogue_refuses_a_folder_without_its_photos(tmp_path, postgres_server):
    url = postgres_server.new_database()
    try:
        catalog = Catalog(tmp_path / "shared", database=url)
        add(catalog, demo_photos("Lemon")[0])
        with pytest.raises(CatalogError, match="catalogue of another workspace folder"):
            Catalog(tmp_path / "my-default-workspace", database=url)
        with pytest.raises(CatalogError, match="already holds a catalogue"):
            Catalog(tmp_path / "shared", database=url).copy_rows_from(catalog)
        assert Catalog(tmp_path / "shared", database=url, create=False).count_products() == 1
    finally:
        postgres_server.drop(url)
