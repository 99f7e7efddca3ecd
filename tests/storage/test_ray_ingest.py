"""Import on a real local Ray (2 workers) stores what the in-process import stores, and reports the same."""

import hashlib
import shutil
import zipfile

import pytest

from conftest import demo_photos
from core._internal.ray_runtime import start_ray
from core.storage import ingest
from core.storage.catalog import Catalog
from core.storage.ray_ingest import import_paths_on_ray


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray (2 CPUs) for the module, started as the import starts it; the import then joins it."""
    ray, _ = start_ray(None, 2)
    yield
    ray.shutdown()


@pytest.fixture
def source(tmp_path):
    """A folder tree as suppliers send it: photos, a copy, a broken file, an empty one, notes, a zip."""
    root = tmp_path / "source"
    for category in ("Banana", "Lemon"):
        folder = root / "Fruit" / category
        folder.mkdir(parents=True)
        for photo in demo_photos(category)[:3]:
            shutil.copy(photo, folder / photo.name)
    shutil.copy(demo_photos("Banana")[0], root / "Fruit" / "Banana" / "again.jpg")
    (root / "Fruit" / "Lemon" / "broken.jpg").write_bytes(b"not a photo")
    (root / "Fruit" / "Lemon" / "empty.png").write_bytes(b"")
    (root / "notes.txt").write_text("shot in March")
    with zipfile.ZipFile(root / "extra.zip", "w") as archive:
        archive.write(demo_photos("Orange")[0], "Orange/o0.jpg")
    return root


def _contents(catalog: Catalog) -> dict[str, str | None]:
    labels = catalog.current_labels()
    return {product.sha256: labels.get(product.id) for product in catalog.products()}


def _summary(report: ingest.ImportReport) -> dict:
    summary = report.to_dict()
    summary["rejected_files"] = sorted((row["name"], row["reason"]) for row in summary["rejected_files"])
    return summary


def test_ray_workers_import_like_the_in_process_path(tmp_path, source, local_ray):
    here, on_ray = Catalog(tmp_path / "here"), Catalog(tmp_path / "ray")
    expected = ingest.import_paths(here, [source, source / "extra.zip"])
    seen = []
    report = import_paths_on_ray(on_ray, [source, source / "extra.zip"], workers=2, batch_size=2,
                                 progress=lambda done, total, name: seen.append((done, total)))

    assert len(expected.added) == 7 and len(expected.rejected) == 2 and expected.parents_set == 2
    assert _summary(report) == _summary(expected)
    assert sorted(report.names.values()) == sorted(expected.names.values())
    assert [name for name, _ in report.duplicates] == [str(source / "Fruit" / "Banana" / "again.jpg")]
    assert _contents(on_ray) == _contents(here)
    assert on_ray.category_parents() == here.category_parents()
    assert seen[-1] == (len(seen), len(seen))
    for product in on_ray.products():  # each file at its content address, written by a worker
        assert hashlib.sha256(on_ray.image_path(product).read_bytes()).hexdigest() == product.sha256


def test_a_bucket_prefix_imports_on_ray_and_here_alike(tmp_path, source, local_ray):
    """pyarrow's file systems read buckets (s3://, gs://); file:// is the one reachable here."""
    uri = source.as_uri()
    here, on_ray = Catalog(tmp_path / "here"), Catalog(tmp_path / "ray")
    expected = ingest.import_paths(here, [uri, uri + "/no-such-folder"])
    report = import_paths_on_ray(on_ray, [uri, uri + "/no-such-folder"], workers=2)
    assert len(expected.added) == 6 and len(expected.duplicates) == 1
    assert _summary(report) == _summary(expected)
    assert (uri + "/no-such-folder", "no such file or folder") in _summary(report)["rejected_files"]
    assert sorted(set(_contents(on_ray).values())) == ["Banana", "Lemon"] and _contents(on_ray) == _contents(here)
    assert on_ray.category_parents() == {"Banana": "Fruit", "Lemon": "Fruit"}
    # Imported again: nothing new, every photo a duplicate.
    again = import_paths_on_ray(on_ray, [uri], workers=1)
    assert not again.added and len(again.duplicates) == 7 and on_ray.count_products() == 6
