"""Similar-product search at catalogue scale: exact vs approximate indexes, recall and speed.

Vectors: the grocery photos' real default features (photos and crop views), and as many
synthetic products as ``--products`` asks for beyond them, each a real vector with noise
added (cosine about 0.9 to its source, so near-identical shots exist as in a real
catalogue). For each index: build seconds, one query's milliseconds (mean of 200 queries
of catalogue products, one at a time, as the Similar page asks), recall@10 against exact
search, and the memory the index holds. Rows: the exact matrix product (today's default
below ``APPROXIMATE_FROM``), ProductLens's ``ApproximateIndex`` (faiss's inverted file on
8-bit scalar-quantised vectors) at several probe counts, faiss's HNSW graph on the same
8-bit codes (ProductLens's index until stop 23), and hnswlib's float32 HNSW where hnswlib
is installed (``pip install hnswlib==0.8.0``; it builds from source, so it is not a
requirement).

    python benchmarks/ann.py [--products 100000]
Writes ``benchmarks/results/ann.json``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from _grocery import grocery_features
from _results import write_result


def real_vectors() -> np.ndarray:
    """The grocery photos' default features: train and val photos, then the train photos' crop views."""
    data = grocery_features()
    return np.concatenate([data.train.features, data.val.features, *data.train.views]).astype(np.float32)


def real_count() -> int:
    return len(real_vectors())


def catalogue_vectors(count: int, seed: int = 0) -> np.ndarray:
    real = real_vectors()
    real /= np.linalg.norm(real, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    vectors = np.empty((count, real.shape[1]), np.float32)
    taken = min(count, len(real))
    vectors[:taken] = real[:taken]
    for start in range(taken, count, 10_000):
        stop = min(count, start + 10_000)
        source = real[rng.integers(0, len(real), stop - start)]
        noisy = source + rng.normal(scale=0.5 / np.sqrt(real.shape[1]), size=source.shape).astype(np.float32)
        vectors[start:stop] = noisy / np.linalg.norm(noisy, axis=1, keepdims=True)
    return vectors


def measure(name: str, build, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray | None, k: int = 10):
    started = time.perf_counter()
    index, memory = build()
    build_seconds = time.perf_counter() - started
    found = []
    started = time.perf_counter()
    for query in queries:
        found.append(index(query[None, :], k)[0])
    query_ms = (time.perf_counter() - started) / len(queries) * 1000
    found = np.stack(found)
    recall = 1.0 if truth is None else float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))
    row = {"index": name, "build_seconds": round(build_seconds, 1), "query_ms": round(query_ms, 2),
           "recall_at_10": round(recall, 4), "memory_mb": round(memory / 2**20)}
    print(json.dumps(row), flush=True)
    return row, found


def main() -> None:
    from core.curation.ann import ApproximateIndex
    from core.curation.similarity import ExactIndex

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=100_000)
    args = parser.parse_args()
    vectors = catalogue_vectors(args.products)
    ids = np.arange(len(vectors))
    queries = vectors[np.random.default_rng(1).choice(len(vectors), 200, replace=False)]
    rows = []

    def exact():
        index = ExactIndex().fit(ids, vectors)
        return (lambda q, k: index.query(q, k)[0]), index.vectors_.nbytes

    row, truth = measure("exact (matrix product)", exact, vectors, queries, None)
    rows.append(row)

    from core.curation.ann import cells_for

    kept = {}

    def inverted_file():
        kept["index"] = ApproximateIndex().fit(ids, vectors)
        return (lambda q, k: kept["index"].query(q, k)[0]), len(vectors) * (vectors.shape[1] + 16)

    cells = cells_for(len(vectors))
    for probes in (8, 1, 32):
        def probed(probes=probes):
            if "index" not in kept:
                return inverted_file()
            kept["index"].probes = probes
            return (lambda q, k: kept["index"].query(q, k)[0]), len(vectors) * (vectors.shape[1] + 16)

        default = " (ProductLens)" if probes == ApproximateIndex().probes else " (the same index)"
        rows.append(measure(f"faiss inverted file, 8-bit scalar quantised, {cells} cells, {probes} probed{default}",
                            probed, vectors, queries, truth)[0])

    # Near-duplicate pairs (cosine >= 0.92) among the real photos and their crop views: all pairs vs the
    # index's in-cell sweep (what duplicate groups come from above APPROXIMATE_FROM).
    from core.curation.duplicates import DEFAULT_THRESHOLD
    from core.curation.similarity import close_pairs

    real = real_count()
    truth_pairs = {(min(a, b), max(a, b)) for a, b in zip(*close_pairs(vectors[:real], DEFAULT_THRESHOLD).nonzero())}
    started = time.perf_counter()
    swept = kept["index"].close_pairs(DEFAULT_THRESHOLD)
    sweep_seconds = time.perf_counter() - started
    swept = {(min(a, b), max(a, b)) for a, b in swept.tolist() if a < real and b < real}
    near_duplicates = {"threshold": DEFAULT_THRESHOLD, "pairs": len(truth_pairs), "found": len(swept & truth_pairs),
                       "recall": round(len(swept & truth_pairs) / max(len(truth_pairs), 1), 4),
                       "not_in_all_pairs": len(swept - truth_pairs), "sweep_seconds": round(sweep_seconds, 1)}
    print(json.dumps(near_duplicates), flush=True)

    def graph():
        import faiss

        hnsw = faiss.IndexHNSWSQ(int(vectors.shape[1]), faiss.ScalarQuantizer.QT_8bit, 16, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction, hnsw.hnsw.efSearch = 40, 64
        hnsw.train(vectors[:20_000])
        hnsw.add(vectors)
        return (lambda q, k: hnsw.search(q, k)[1]), len(vectors) * (vectors.shape[1] + 2 * 16 * 8)

    rows.append(measure("faiss HNSW, 8-bit scalar quantised, M 16, ef 64 (until stop 23)", graph, vectors, queries,
                        truth)[0])
    try:
        import hnswlib
    except ImportError:
        hnswlib = None
    if hnswlib is not None:
        def full_precision():
            index = hnswlib.Index(space="cosine", dim=int(vectors.shape[1]))
            index.init_index(max_elements=len(vectors), ef_construction=100, M=16)
            index.add_items(vectors, ids)
            index.set_ef(64)
            return (lambda q, k: index.knn_query(q, k)[0]), len(vectors) * (vectors.shape[1] * 4 + 2 * 16 * 8)

        rows.append(measure("hnswlib HNSW, float32, M 16, ef 64", full_precision, vectors, queries, truth)[0])
    write_result("ann", {"rows": rows, "products": int(len(vectors)), "dim": int(vectors.shape[1]),
                         "queries": int(len(queries)), "near_duplicates": near_duplicates})


if __name__ == "__main__":
    main()
