import numpy as np

from core.curation.projection import exact_neighbours, project


def test_exact_neighbours_match_brute_force_and_start_with_the_product_itself():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 12)).astype(np.float32)
    features[7] = features[3]  # an exact duplicate must not displace the product itself
    indices, distances = exact_neighbours(features, 5, block=64)
    assert (indices[:, 0] == np.arange(300)).all() and np.allclose(distances[:, 0], 0.0)
    assert indices[3, 1] == 7 and distances[3, 1] < 1e-5
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    brute = np.argsort(-(unit @ unit.T), axis=1)
    for row in range(300):
        assert set(indices[row, 1:]) == set(brute[row][brute[row] != row][:4]), row
    assert (np.diff(distances, axis=1) >= -1e-6).all(), "nearest first"


def test_projection_separates_clusters_and_is_reproducible():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(3, 32)) * 5
    features = np.concatenate([centre + rng.normal(size=(60, 32)) for centre in centres]).astype(np.float32)
    first = project(features)
    assert first.shape == (180, 2) and np.isfinite(first).all()
    np.testing.assert_allclose(project(features), first, atol=1e-4)
    means = np.stack([first[i * 60:(i + 1) * 60].mean(axis=0) for i in range(3)])
    spread = max(first[i * 60:(i + 1) * 60].std(axis=0).max() for i in range(3))
    gaps = [np.linalg.norm(means[i] - means[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 2 * spread, "each cluster is its own island"


def test_warm_up_compiles_the_map_kernels_and_a_map_drawn_meanwhile_waits_for_it(tmp_path):
    """The app warms up in a background thread while someone may already open Explore: the map must
    neither see a half-imported umap nor fail; afterwards the layout kernels are compiled in the process."""
    import subprocess
    import sys
    from pathlib import Path

    code = """
import threading, numpy as np
from core.curation import projection
warm = threading.Thread(target=projection.warm_up)
warm.start()
coordinates = projection.project(np.random.default_rng(1).normal(size=(40, 16)).astype(np.float32))
warm.join()
import umap.layouts
assert coordinates.shape == (40, 2) and np.isfinite(coordinates).all()
assert not projection.warm_up_needed(), "the machine's disk cache now holds the kernels"
print(len(umap.layouts._nb_optimize_layout_euclidean_single_epoch.signatures))
"""
    repo = Path(__file__).resolve().parents[2]
    fresh = "from core.curation import projection; print(projection.warm_up_needed())"
    env = {**__import__("os").environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    before = subprocess.run([sys.executable, "-c", fresh], cwd=repo, capture_output=True, text=True, env=env)
    assert before.stdout.strip().splitlines()[-1] == "True", "a new machine needs the warm-up"
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=600,
                            env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.strip().splitlines()[-1]) >= 1


def test_the_app_starts_the_warm_up_once_per_server(monkeypatch, tmp_path):
    import threading
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    import pages.shared
    from core.curation import projection
    from pages.shared import warm_up_in_background  # a fresh server: nothing started yet

    monkeypatch.setenv("PRODUCTLENS_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.setattr(pages.shared, "WARM_UP_DELAY_S", 0.0)
    calls = []
    monkeypatch.setattr(projection, "warm_up", lambda: calls.append(threading.current_thread().name))
    import time

    for needed in (False, True):  # a machine whose disk cache holds the kernels; a new machine
        monkeypatch.setattr(projection, "warm_up_needed", lambda: needed)
        warm_up_in_background.clear()
        for _ in range(2):
            AppTest.from_file(str(Path(__file__).resolve().parents[2] / "app.py"), default_timeout=120).run()
            deadline = time.time() + (5 if not needed else 60)
            while not calls and time.time() < deadline:  # started by the app itself, not by this test
                time.sleep(0.05)
        assert calls == ([] if not needed else ["productlens-map-warm-up"])
