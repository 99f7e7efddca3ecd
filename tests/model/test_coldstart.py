import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, demo_photos
from core.errors import TrainingError
from core.features.embeddings import embed_catalog
from core.model.coldstart import adapt_to_catalogue, cold_start, prototype_head
from core.model.prediction import predict_catalog
from core.model.training import load_version
from core.storage import ingest
from core.storage.catalog import Catalog


@pytest.fixture(scope="module")
def references(tmp_path_factory, demo_dir):
    """One reference photo per demo category (its first photo); the other 7 are the catalogue."""
    root = tmp_path_factory.mktemp("refs")
    for category in sorted(p.name for p in demo_dir.iterdir() if p.is_dir()):
        (root / category).mkdir()
        shutil.copy(demo_photos(category)[0], root / category / "reference.jpg")
    return root


def test_prototypes_predict_unlabelled_products(tmp_path, references, embedder, demo_dir):
    catalog = Catalog(tmp_path / "ws")
    truth = {}
    for category in sorted(p.name for p in demo_dir.iterdir() if p.is_dir()):
        report = ingest.import_paths(catalog, demo_photos(category)[1:])  # single files: unlabelled
        truth.update({pid: category for pid in report.product_ids})
    embed_catalog(catalog, embedder)
    version, rejected = cold_start(catalog, embedder, references)
    assert not rejected and len(version.classes) == 10 and version.params["kind"] == "prototypes"
    assert catalog.current_labels() == {}, "cold start needs no labels"
    predict_catalog(catalog, version)
    predictions = catalog.predictions(version.id)
    correct = sum(predictions[pid]["label"] == label for pid, label in truth.items())
    assert correct / len(truth) >= 0.8, f"{correct}/{len(truth)}"
    assert load_version(catalog)[0].id == version.id  # reloads like any head


def test_cold_start_needs_two_categories(tmp_path, embedder, references):
    single = tmp_path / "single"
    shutil.copytree(references / "Lemon", single / "Lemon")
    with pytest.raises(TrainingError, match="2 categories"):
        cold_start(Catalog(tmp_path / "ws"), embedder, single)


def test_coldstart_command(tmp_path, references, demo_dir):
    workspace = tmp_path / "ws"
    Catalog(workspace)
    ingest.import_paths(Catalog(workspace), [demo_dir / "Lemon", demo_dir / "Banana"])
    result = subprocess.run([sys.executable, "-m", "core", "--workspace", str(workspace), "coldstart",
                             "--references", str(references), "--quiet"],
                            capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["categories"] == 10 and summary["predicted"] == 16


def test_adaptation_centres_and_pulls_prototypes_towards_the_catalogue():
    rng = np.random.default_rng(0)
    shared = rng.normal(size=32) * 5  # what every catalogue photo has in common (shelf, lighting)
    truths = rng.normal(size=(3, 32))
    catalogue = np.concatenate([shared + truth + 0.3 * rng.normal(size=(40, 32)) for truth in truths])
    references = truths + 0.8 * rng.normal(size=(3, 32))  # packshots: no shelf, a different style
    centre, transform, adapted = adapt_to_catalogue(references, catalogue, shrinkage=None)
    assert transform is None
    assert centre.shape == (32,) and np.allclose(np.linalg.norm(adapted, axis=1), 1.0, atol=1e-5)

    def accuracy(prototypes, centre):
        features = catalogue / np.linalg.norm(catalogue, axis=1, keepdims=True) - centre
        return np.mean((features @ prototypes.T).argmax(axis=1) == np.repeat(np.arange(3), 40))

    raw = references / np.linalg.norm(references, axis=1, keepdims=True)
    assert accuracy(adapted, centre) >= accuracy(raw, np.zeros(32))
    assert accuracy(adapted, centre) > 0.9
    empty_centre, no_transform, unchanged = adapt_to_catalogue(references, np.zeros((0, 32)))
    assert not empty_centre.any() and no_transform is None and np.allclose(unchanged, raw, atol=1e-6)


def test_whitening_discounts_what_every_catalogue_photo_varies_in():
    """Lighting and framing vary strongly across all photos and say nothing about the product: after
    whitening with the catalogue's covariance the nearest prototype is right far more often."""
    rng = np.random.default_rng(1)
    truths = rng.normal(size=(4, 48))
    nuisance = rng.normal(size=(3, 48))  # three directions every photo moves along, whatever it shows
    truth_of = np.repeat(np.arange(4), 60)
    catalogue = truths[truth_of] + 4.0 * rng.normal(size=(240, 3)) @ nuisance + 0.3 * rng.normal(size=(240, 48))
    references = truths + 0.3 * rng.normal(size=(4, 48))
    accuracies = {}
    for name, shrinkage in (("centred", None), ("whitened", 4.0)):
        centre, transform, adapted = adapt_to_catalogue(references, catalogue, iterations=0, shrinkage=shrinkage)
        head = prototype_head(list("abcd"), adapted, centre=centre, transform=transform)
        accuracies[name] = np.mean(head.predict(catalogue) == np.array(list("abcd"))[truth_of])
    assert accuracies["whitened"] > accuracies["centred"] + 0.15, accuracies
    assert accuracies["whitened"] > 0.9, accuracies


def test_references_can_be_a_zip_of_category_folders(tmp_path, references, embedder, demo_dir):
    import zipfile

    archive = tmp_path / "references.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for photo in sorted(references.rglob("*.jpg")):
            handle.write(photo, photo.relative_to(references).as_posix())
    catalog = Catalog(tmp_path / "ws")
    ingest.import_paths(catalog, [demo_dir / "Lemon"])
    embed_catalog(catalog, embedder)
    version, rejected = cold_start(catalog, embedder, archive)
    assert not rejected and len(version.classes) == 10 and version.params["adapted"]
