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
