"""SIGKILL a real ProductLens process in the middle of work, then check that nothing was lost.

Each test starts `python -c SCRIPT` on a workspace, waits until the work is under
way, kills it with SIGKILL (no clean-up code runs), and reopens the catalogue.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, demo_photos
from core.features.embeddings import embed_catalog
from core.model.training import load_version
from core.storage import ingest
from core.storage.catalog import Catalog

# Runs on SQLite and on a real PostgreSQL server (conftest.database).
pytestmark = pytest.mark.usefixtures("database")


def start(script: str, workspace) -> subprocess.Popen:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(workspace)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_when(process: subprocess.Popen, marker: str, delay: float, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    for line in process.stdout:
        if marker in line:
            break
        assert time.time() < deadline, "work never started"
    else:
        raise AssertionError(f"process ended before printing {marker!r}")
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the process should have been killed mid-work"


def labelled_workspace(workspace):
    catalog = Catalog(workspace)
    ingest.import_paths(catalog, [demo_photos("Lemon")[0].parent.parent])
    catalog.set_labels([(catalog.product_ids()[0], "Corrected")], author="ana")
    return catalog, dict(catalog.current_labels())


def test_kill_during_import(workspace, tmp_path):
    catalog, labels = labelled_workspace(workspace)
    folder = tmp_path / "many" / "Noise"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    # Enough photos that a fast machine is still importing when the kill comes.
    for index in range(1000):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{index:04d}.png")
    process = start("""
        import sys
        from core.storage import ingest
        from core.storage.catalog import Catalog
        catalog = Catalog(sys.argv[1])
        ingest.import_paths(catalog, [sys.argv[2]], progress=lambda d, t, n: print("progress", d, flush=True))
    """.replace("sys.argv[2]", repr(str(tmp_path / "many"))), workspace)
    kill_when(process, "progress 20", 0.05)

    catalog = Catalog(workspace)
    assert catalog.integrity_ok()
    assert {pid: catalog.current_labels()[pid] for pid in labels} == labels, "no label lost"
    partial = catalog.count_products()
    assert 80 < partial < 1080, "killed part-way"
    for product in catalog.products():
        assert catalog.image_path(product).is_file(), "every product row points at its photo"
    report = ingest.import_paths(catalog, [tmp_path / "many"])  # resume: only the rest is added
    assert catalog.count_products() == 1080 and len(report.added) == 1080 - partial


def test_kill_during_embedding_resumes(workspace, embedder):
    catalog, labels = labelled_workspace(workspace)
    process = start("""
        import sys
        from core.storage.catalog import Catalog
        from core.features.embeddings import Embedder, embed_catalog
        catalog = Catalog(sys.argv[1])
        embed_catalog(catalog, Embedder(), chunk_size=8, progress=lambda d, t, m: print("embedded", d, flush=True))
    """, workspace)
    kill_when(process, "embedded 16", 0.5)

    catalog = Catalog(workspace)
    assert catalog.integrity_ok() and catalog.current_labels() == labels
    done = catalog.count_embeddings(embedder.key)
    assert 16 <= done < 80
    _, vectors = catalog.embeddings(embedder.key)
    assert np.isfinite(vectors).all() and vectors.shape[1] == embedder.feature_dim
    report = embed_catalog(catalog, embedder)
    assert report.cached == done and report.computed == 80 - done


def test_kill_during_training_and_model_save_keeps_a_working_model(workspace, embedder):
    catalog, labels = labelled_workspace(workspace)
    embed_catalog(catalog, embedder)
    from core.model.head import HeadClassifier
    from core.model.training import train_version
    first = train_version(catalog, embedder, HeadClassifier(), augmented_views=0)
    process = start("""
        import sys
        from core.storage.catalog import Catalog
        from core.features.embeddings import Embedder
        from core.model.head import HeadClassifier
        from core.model.training import train_version
        catalog = Catalog(sys.argv[1])
        for round in range(1000):
            train_version(catalog, Embedder(), HeadClassifier(), augmented_views=0)
            print("saved", round, flush=True)
    """, workspace)
    kill_when(process, "saved 2", 0.37)  # lands in training or in the middle of a save

    catalog = Catalog(workspace)
    catalog.discard_partial_files(max_age_seconds=0)
    assert catalog.integrity_ok() and catalog.current_labels() == labels
    active = catalog.active_model_version()
    assert active.id >= first.id + 3
    assert [v.is_active for v in catalog.model_versions()].count(True) == 1
    version, head = load_version(catalog)
    _, features = catalog.embeddings(embedder.key)
    assert head.predict_proba(features[:4]).shape == (4, len(version.classes))
    models = catalog.workspace / "models"
    assert not [p for p in models.iterdir() if ".tmp" in p.name], "partial files are discarded"
    for version in catalog.model_versions():
        assert (catalog.workspace / version.path).is_file(), "every recorded version has its file"
