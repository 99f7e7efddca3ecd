"""The catalogue on SQLite and on PostgreSQL: the same operations, side by side.

A synthetic catalogue of ``--products`` products (a third labelled, over 300
categories; one ``--dim``-dimensional float16 vector each; one model version's
predictions for all) is written into a new SQLite workspace and into a new database
on a local PostgreSQL server (the throw-away server of ``tests/postgres_server.py``,
or ``$PRODUCTLENS_TEST_POSTGRES``), through :class:`core.storage.Catalog` only. Then,
on each, the reads behind the pages (Home's counts, the current labels, the latest
activity, 50 products' vectors as an upload needs, every vector as training needs,
one version's predictions) and the writes people make: one correction with its
optimistic check (milliseconds, mean of 200), and corrections per second from 4
processes correcting at once (each change checked against what its writer saw).

    python benchmarks/database.py [--products 100000] [--dim 3632]
Writes ``benchmarks/results/database.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sqlalchemy import text

from _results import REPO, write_result

sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from core.storage.catalog import Catalog, utc_now  # noqa: E402


def fill(catalog: Catalog, products: int, dim: int, seed: int = 0, vectors=None) -> dict:
    """Write the synthetic catalogue; return the seconds each part took. ``vectors(rng, count)`` makes each
    chunk's vectors (default: Gaussian noise of ``dim`` dimensions)."""
    rng = np.random.default_rng(seed)
    seconds = {}
    started = time.perf_counter()
    now = utc_now()
    for start in range(0, products, 10_000):
        ids = range(start + 1, min(products, start + 10_000) + 1)
        with catalog.transaction() as connection:
            # No photo files: the rows are what is measured (add_image would write a file per product).
            connection.execute(text(
                "INSERT INTO products (id, sha256, filename, source, stored_path, format, width, height, size_bytes, "
                "added_at) VALUES (:id, :sha256, :filename, NULL, :path, 'JPEG', 640, 480, 50000, :now)"),
                [{"id": i, "sha256": f"{i:064x}", "filename": f"{i}.jpg", "path": f"images/{i:064x}.jpg", "now": now}
                 for i in ids])
    seconds["products"] = time.perf_counter() - started
    started = time.perf_counter()
    labelled = list(range(1, products + 1, 3))
    catalog.set_labels([(pid, f"category-{pid % 300:03d}") for pid in labelled], source="import")
    seconds["labels"] = time.perf_counter() - started
    started = time.perf_counter()
    for start in range(0, products, 5_000):
        ids = list(range(start + 1, min(products, start + 5_000) + 1))
        chunk = rng.normal(size=(len(ids), dim)) if vectors is None else vectors(rng, len(ids))
        catalog.store_embeddings("bench", ids, chunk.astype(np.float16))
    seconds["embeddings"] = time.perf_counter() - started
    started = time.perf_counter()
    version = catalog.add_model_version("bench", [f"category-{c:03d}" for c in range(300)], {}, {}, "models/none")
    for start in range(0, products, 10_000):
        ids = list(range(start + 1, min(products, start + 10_000) + 1))
        top = rng.integers(0, 300, size=(len(ids), 3))
        catalog.store_predictions(version, ids, [[f"category-{c:03d}" for c in row] for row in top],
                                  np.sort(rng.dirichlet(np.ones(3), size=len(ids)), axis=1)[:, ::-1])
    seconds["predictions"] = time.perf_counter() - started
    return {name: round(value, 1) for name, value in seconds.items()}


def timed(function, repeat: int = 1) -> tuple[float, object]:
    started = time.perf_counter()
    for _ in range(repeat):
        value = function()
    return (time.perf_counter() - started) / repeat, value


def _corrector(workspace: str, database: str, name: str, rounds: int, products: int, ready, go, queue) -> None:
    catalog = Catalog(workspace, database=database)
    catalog.current_label(1)  # connected
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    ready.put(name)
    go.wait()  # every writer starts together
    applied = conflicts = 0
    for _ in range(rounds):
        product = int(rng.integers(1, 200))  # a hot spot: people correct the same page of products
        seen = catalog.current_label(product)
        changed, lost = catalog.change_labels([(product, f"category-{rng.integers(0, 300):03d}", seen)], author=name)
        applied, conflicts = applied + changed, conflicts + len(lost)
    queue.put((applied, conflicts))


def concurrent_corrections(workspace: str, database: str, products: int, writers: int = 4, rounds: int = 200):
    context = multiprocessing.get_context("spawn")
    ready, go, queue = context.Queue(), context.Event(), context.Queue()
    processes = [context.Process(target=_corrector, args=(workspace, database, f"user{i}", rounds, products,
                                                          ready, go, queue)) for i in range(writers)]
    for process in processes:
        process.start()
    for _ in processes:
        ready.get(timeout=300)
    started = time.perf_counter()
    go.set()
    results = [queue.get(timeout=600) for _ in processes]
    seconds = time.perf_counter() - started
    for process in processes:
        process.join(timeout=60)
    applied = sum(r[0] for r in results)
    return {"writers": writers, "corrections": writers * rounds, "applied": applied,
            "conflicts": sum(r[1] for r in results), "per_second": round(writers * rounds / seconds, 1)}


def measure(name: str, catalog: Catalog, workspace: str, database: str, products: int, dim: int) -> dict:
    row = {"database": name, "fill_seconds": fill(catalog, products, dim)}
    version = catalog.active_model_version().id
    reads = {
        "home counts (status)": lambda: catalog.status(),
        "current labels": lambda: catalog.current_labels(),
        "activity (latest 50 events)": lambda: catalog.label_history(limit=50),
        "50 products' vectors": lambda: catalog.embeddings("bench", list(range(1, products, products // 50))[:50]),
        "every vector": lambda: catalog.embeddings("bench"),
        "one version's predictions": lambda: catalog.predictions(version),
    }
    row["reads_ms"] = {}
    for label, read in reads.items():
        seconds, _ = timed(read, repeat=1 if label in ("every vector", "one version's predictions") else 5)
        row["reads_ms"][label] = round(seconds * 1000, 1)
        print(name, label, row["reads_ms"][label], "ms", flush=True)
    rng = np.random.default_rng(1)

    def one_correction():
        product = int(rng.integers(1, products + 1))
        catalog.change_labels([(product, "corrected", catalog.current_label(product))], author="bench")

    seconds, _ = timed(one_correction, repeat=200)
    row["one_correction_ms"] = round(seconds * 1000, 2)
    row["concurrent"] = concurrent_corrections(workspace, database, products)
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=3632)
    args = parser.parse_args()
    import postgres_server

    rows = []
    with tempfile.TemporaryDirectory(prefix="productlens-db-bench-") as scratch:
        sqlite_workspace = str(Path(scratch) / "sqlite")
        rows.append(measure("SQLite (the workspace's file)", Catalog(sqlite_workspace, database="sqlite"),
                            sqlite_workspace, "sqlite", args.products, args.dim))
        server = postgres_server.start()
        try:
            url = server.new_database()
            postgres_workspace = str(Path(scratch) / "postgres")
            rows.append(measure("PostgreSQL (local server, loopback)", Catalog(postgres_workspace, database=url),
                                postgres_workspace, url, args.products, args.dim))
            server.drop(url)
        finally:
            server.close()
    import sqlalchemy

    write_result("database", {"products": args.products, "dim": args.dim,
                              "labelled": len(range(1, args.products + 1, 3)), "sqlalchemy": sqlalchemy.__version__,
                              "rows": rows})


if __name__ == "__main__":
    main()
