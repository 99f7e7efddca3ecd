"""A catalogue of a million products on this machine: what each page and job costs.

Builds a synthetic SQLite catalogue of ``--products`` products with the rows of
``benchmarks/database.py`` (a third labelled over 300 categories, one model version's
top-3 predictions for all), whose vectors are the grocery photos' real default
features with noise added (cosine about 0.9 to their source, so neighbours and
near-identical shots exist as in a real catalogue). Then, timing each step and the
process's peak memory while it ran:

* Home (AppTest, first render) and its counts; the Activity page's latest changes;
* the Explore map: drawn the first time (a background job after an upload or a
  retrain: fitted on a sample, every other product placed), a rerun that reads the
  kept map, 1,000 new products placed, and the Explore page itself (AppTest);
* the Review page: its "most informative" queue made (a background job after a retrain or
  an upload), the page's default view first rendered and rerun (one page of the queue),
  and the first page of "highest entropy" over every product (sorted by the database);
* similar products: the kept approximate index built once, one query, and its
  recall@10 against exact search over every vector; the Similar page (AppTest): first
  render, then a product found by id and its neighbours shown;
* near-duplicate groups of the whole catalogue from each product's nearest neighbours, then
  the Duplicates page (AppTest) showing the groups kept.

* training on every labelled product as ``train_version`` does at this size (vectors
  streamed by chunks into the closed-form head's moments), then predicting every product
  with it (vectors read 10,000 at a time, top-5 and the "new category?" flag stored).

    python benchmarks/scale.py [--products 1000000] [--workspace DIR] [--only GROUP ...] [--postgresql]
Writes ``benchmarks/results/scale.json`` after every step (a run stopped early keeps
what it measured). With ``--workspace`` the catalogue is kept there and a later run
reuses it; ``--only`` measures some groups again (home, explore, review, similar,
duplicates, predict), keeping the other groups' rows from the last result.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import tempfile
import threading
import time

import numpy as np
from database import fill

from _results import REPO, _commit, write_result

sys.path.insert(0, str(REPO))

from core.curation import duplicates, projection, review  # noqa: E402
from core.curation.ann import persistent_index  # noqa: E402
from core.storage.catalog import Catalog, utc_now  # noqa: E402


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Measured:
    """Seconds and peak resident memory (sampled every 0.1 s) of the work inside ``with``."""

    def __enter__(self):
        self.peak, self._running = _rss_mb(), True
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        self.started = time.perf_counter()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, _rss_mb())
            time.sleep(0.1)

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.started
        self._running = False
        self._sampler.join()
        self.peak = max(self.peak, _rss_mb())
        return False


def real_vector_source():
    """``vectors(rng, count)`` for :func:`database.fill`: real grocery features with noise."""
    from _grocery import grocery_features

    data = grocery_features()
    real = np.concatenate([data.train.features, data.val.features, *data.train.views]).astype(np.float32)
    real /= np.linalg.norm(real, axis=1, keepdims=True)

    def vectors(rng, count):
        noisy = real[rng.integers(0, len(real), count)]
        noisy = noisy + rng.normal(scale=0.5 / np.sqrt(real.shape[1]), size=noisy.shape).astype(np.float32)
        return noisy / np.linalg.norm(noisy, axis=1, keepdims=True)

    return vectors, real.shape[1]


def add_products(catalog: Catalog, count: int, vectors, rng) -> list[int]:
    from sqlalchemy import text

    first = catalog.count_products() + 1
    ids = list(range(first, first + count))
    with catalog.transaction() as connection:
        connection.execute(text(
            "INSERT INTO products (id, sha256, filename, source, stored_path, format, width, height, size_bytes, "
            "added_at) VALUES (:id, :sha256, :filename, NULL, :path, 'JPEG', 640, 480, 50000, :now)"),
            [{"id": i, "sha256": f"{i:064x}", "filename": f"{i}.jpg", "path": f"images/{i:064x}.jpg",
              "now": utc_now()} for i in ids])
    catalog.store_embeddings("bench", ids, vectors(rng, count))
    return ids


def trained_version(catalog: Catalog) -> int:
    """A model version (not activated) trained on every labelled product the way ``train_version`` trains a
    catalogue this big: streamed by chunks, a "new category?" detector from a sample."""
    from core.model.head import HeadClassifier
    from core.model.training import novelty_path, train_streamed

    head = HeadClassifier()
    ids, _, detector = train_streamed(catalog, "bench", "bench", head, catalog.current_labels())
    relative = f"models/head-bench-{len(ids)}.keras"
    detector.save(novelty_path(catalog.workspace / relative))
    head.save(catalog.workspace / relative)
    return catalog.add_model_version("bench", list(head.classes_), dict(head.metrics_), {}, relative, activate=False)


def exact_top(catalog: Catalog, queries: np.ndarray, k: int, chunk: int = 20_000) -> np.ndarray:
    """The exact ``k`` nearest products of each query, every vector read a chunk at a time."""
    ids = np.asarray(catalog.embedded_product_ids("bench"), dtype=np.int64)
    best_ids = np.zeros((len(queries), 0), np.int64)
    best_scores = np.zeros((len(queries), 0), np.float32)
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    for start in range(0, len(ids), chunk):
        chunk_ids, vectors = catalog.embeddings("bench", ids[start:start + chunk].tolist())
        scores = unit @ (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).T
        best_ids = np.concatenate([best_ids, np.broadcast_to(chunk_ids, scores.shape)], axis=1)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        keep = np.argsort(-best_scores, axis=1)[:, :k]
        best_ids = np.take_along_axis(best_ids, keep, axis=1)
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
    return best_ids


GROUPS = ["home", "explore", "review", "similar", "duplicates", "predict"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=1_000_000)
    parser.add_argument("--workspace", help="keep the catalogue here (default: a temporary folder)")
    parser.add_argument("--only", nargs="+", choices=GROUPS, default=GROUPS, help="measure only these groups")
    parser.add_argument("--postgresql", action="store_true",
                        help="the catalogue on a throw-away local PostgreSQL server (tests/postgres_server.py); "
                             "writes scale_postgresql.json")
    args = parser.parse_args()
    vectors, dim = real_vector_source()
    rows: list[dict] = []
    name = "scale_postgresql" if args.postgresql else "scale"
    result = {"products": args.products, "dim": dim, "rows": rows,
              "database": "PostgreSQL (local server, loopback)" if args.postgresql else "SQLite"}
    earlier = REPO / "benchmarks" / "results" / f"{name}.json"
    if set(args.only) != set(GROUPS) and earlier.exists():
        previous = json.loads(earlier.read_text())
        result.update({key: previous[key] for key in ("fill_seconds", "disk_gb") if key in previous})
        # Rows kept from the last result say when, at which commit and on which machine they were measured.
        rows += [{"measured_at": previous["measured_at"], "commit": previous["commit"],
                  "machine": previous.get("machine"), **row}
                 for row in previous["rows"] if row.get("group") not in args.only]

    def record(group: str, step: str, measured: Measured, **extra) -> None:
        row = {"group": group, "step": step, "seconds": round(measured.seconds, 3),
               "peak_memory_mb": round(measured.peak), **extra,
               "measured_at": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": _commit()}
        rows.append(row)
        rows.sort(key=lambda r: GROUPS.index(r["group"]))  # stable: a group's steps keep their order
        print(json.dumps(row), flush=True)
        write_result(name, result)

    server = database = None
    if args.postgresql:
        sys.path.insert(0, str(REPO / "tests"))
        import postgres_server

        server = postgres_server.start()
        database = server.new_database()
    try:
        with tempfile.TemporaryDirectory(prefix="productlens-scale-") as scratch:
            measure(args, result, record, vectors, dim, args.workspace or scratch, database or "sqlite")
    finally:
        if server is not None:
            server.close()


def measure(args, result: dict, record, vectors, dim: int, workspace: str, database: str) -> None:
    catalog = Catalog(workspace, database=database)
    if catalog.count_products() == 0:
        result["fill_seconds"] = fill(catalog, args.products, dim, vectors=vectors)
        print(json.dumps(result["fill_seconds"]), flush=True)
    if database == "sqlite":
        # A schema upgrade's copy of the old catalogue (catalog.sqlite.schemaN.bak) is not part of it.
        result["disk_gb"] = round(sum(f.stat().st_size for f in catalog.workspace.rglob("*")
                                      if f.is_file() and not f.name.endswith(".bak")) / 1e9, 2)

    from streamlit.testing.v1 import AppTest

    os.environ["PRODUCTLENS_WORKSPACE"] = str(workspace)
    os.environ["PRODUCTLENS_DATABASE"] = database
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=3600)

    def render(page: str | None, step: str, group: str) -> None:
        with Measured() as measured:
            (app.switch_page(page) if page else app).run()
        if app.exception:
            sys.exit(f"{step} failed: {app.exception}")
        record(group, step, measured)

    if "home" in args.only:
        with Measured() as measured:
            catalog.status()
        record("home", "Home counts (status)", measured)
        with Measured() as measured:
            catalog.label_history(limit=50)
        record("home", "Activity: the latest 50 changes", measured)
        render(None, "Home page, first render (AppTest)", "home")
    else:
        app.run()

    if "explore" in args.only:
        for kept in (catalog.workspace / "cache").glob("umap-*"):
            kept.unlink()  # a kept workspace's earlier map: drawn again here
        with Measured() as measured:
            projection.umap_projection(catalog, "bench")
        record("explore", "Explore map, drawn the first time (background job)", measured,
               fitted_on=projection.MAP_SAMPLE)
        with Measured() as measured:
            projection.umap_projection(catalog, "bench")
        record("explore", "Explore map, rerun (map kept)", measured)
        # Seeded by the catalogue size: a rerun on a kept catalogue adds new vectors, not copies of the last ones.
        add_products(catalog, 1000, vectors, np.random.default_rng(catalog.count_products()))
        with Measured() as measured:
            ids, _ = projection.umap_projection(catalog, "bench")
        record("explore", "Explore map, 1,000 new products placed", measured, products=len(ids))
        render("pages/explore.py", "Explore page, first render (AppTest, map kept)", "explore")
        render(None, "Explore page, rerun (AppTest)", "explore")

    if "review" in args.only:
        version = catalog.active_model_version().id
        for stale in (catalog.workspace / "cache").glob("review-queue-*.npy"):
            stale.unlink()
        with Measured() as measured:
            queue = review.informative_queue(catalog, version, review.catalog_vectors(catalog, "bench"))
        record("review", "Review queue made (once per model version, background job)", measured,
               products=len(queue))
        render("pages/review.py", "Review page, first render (AppTest, default view)", "review")
        render(None, "Review page, rerun (AppTest)", "review")
        with Measured() as measured:
            page, matching = review.filtered_page(catalog, 1, 12, "highest entropy",
                                                  vectors_of=review.catalog_vectors(catalog, "bench"))
        record("review", "Review, highest entropy first, every product (one page; diversity guard)", measured,
               rows=len(page), products=matching)

    if "similar" in args.only:
        for kept in (catalog.workspace / "cache").glob("ann-*"):
            kept.unlink()  # a kept workspace's earlier index: built again here
        with Measured() as measured:
            index = persistent_index(catalog, "bench")
        record("similar", "Similar products: approximate index built (once, kept in the workspace)", measured)
        query_ids = np.random.default_rng(2).choice(catalog.embedded_product_ids("bench"), 100, replace=False)
        _, queries = catalog.embeddings("bench", query_ids.tolist())
        with Measured() as measured:
            found = np.concatenate([index.query(query[None, :], k=10)[0] for query in queries])
        truth = exact_top(catalog, queries, 10)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)]))
        record("similar", "Similar products: one query (mean of 100)", measured,
               milliseconds=round(measured.seconds * 10, 2), recall_at_10=round(recall, 3))
        del index, found, truth  # the next steps load what they need themselves
        render("pages/similar.py", "Similar page, first render (AppTest; the picker searches)", "similar")
        chosen = int(query_ids[0])
        with Measured() as measured:
            app.text_input(key="similar_search").set_value(str(chosen)).run()
            app.selectbox(key="similar_product").set_value(chosen).run()
        if app.exception:
            sys.exit(f"Similar page failed: {app.exception}")
        record("similar", "Similar page: a product found by id and its 10 neighbours shown (AppTest)", measured,
               shown=len([c for c in app.caption if " · #" in c.value]))
        import streamlit

        streamlit.cache_resource.clear()  # the page's copy of the index: not part of the next steps' memory

    if "duplicates" in args.only:
        for kept in (catalog.workspace / "cache").glob("duplicates-*"):
            kept.unlink()  # a kept workspace's earlier groups: found again here
        with Measured() as measured:
            groups = duplicates.duplicate_groups(catalog, "bench")
        record("duplicates", "Near-duplicate groups, whole catalogue", measured, groups=len(groups))
        render("pages/duplicates.py", "Duplicates page, first render (AppTest, groups kept)", "duplicates")
        render(None, "Duplicates page, rerun (AppTest)", "duplicates")

    if "predict" in args.only:
        from core.model.prediction import predict_catalog

        with Measured() as measured:
            version = trained_version(catalog)
        record("predict", "Train on every labelled product (streamed; head, detector, saved)", measured,
               products=len(catalog.labelled_product_ids()))
        with Measured() as measured:
            predicted = predict_catalog(catalog, version)
        record("predict", "Predict every product (top-5 and the new-category flag stored)", measured,
               products=predicted["predicted"])


if __name__ == "__main__":
    main()
