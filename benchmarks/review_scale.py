"""The Review page on a large catalogue: what a render costs, before and after the stored queue.

Builds the synthetic catalogue of ``benchmarks/database.py`` (``--products`` products, a
third labelled, one ``--dim``-d float16 vector and top-3 predictions each) in a new
SQLite workspace, then times, in this process:

* the review table (one query for every product, its label and its prediction: what a
  small catalogue's render reads);
* the "most informative" order computed in memory from that table, which is what every
  render cost before the queue was stored;
* computing and storing the version's queue once (what the background thread does
  after a retrain or an upload): the database's margin ranking of every product, and the
  rows and vectors of the candidates the greedy pass spreads;
* a small catalogue's render: the table plus the order read from the stored queue;
* the Review page itself through Streamlit's AppTest (the queue already stored), first
  run and a rerun, then with filters and other orders (each a rerun after changing them):
  the database filters, sorts and pages every one (the uncertainty orders by the margin
  and entropy stored with each prediction).

``--dim`` sets the vectors' size: only the queue and the uncertainty orders' diversity
guard read vectors, so a small one lets a million products fit on a small disk.

    python benchmarks/review_scale.py [--products 100000] [--dim 3632] [--postgresql]
Writes ``benchmarks/results/review_scale.json`` (``review_scale_postgresql.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from database import fill

from _results import REPO, write_result

sys.path.insert(0, str(REPO))

from core.curation import review  # noqa: E402
from core.storage.catalog import Catalog  # noqa: E402


def timed(function):
    started = time.perf_counter()
    value = function()
    return round(time.perf_counter() - started, 2), value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=3632)
    parser.add_argument("--postgresql", action="store_true",
                        help="the catalogue on a throw-away local PostgreSQL server (tests/postgres_server.py); "
                             "writes review_scale_postgresql.json")
    args = parser.parse_args()
    server = None
    if args.postgresql:
        sys.path.insert(0, str(REPO / "tests"))
        import postgres_server

        server = postgres_server.start()
    try:
        measure(args, server.new_database() if server else "sqlite")
    finally:
        if server is not None:
            server.close()


def measure(args, database: str) -> None:
    with tempfile.TemporaryDirectory(prefix="productlens-review-scale-") as workspace:
        catalog = Catalog(workspace, database=database)
        fill(catalog, args.products, args.dim)
        version = catalog.active_model_version().id
        vectors = review.catalog_vectors(catalog, "bench")
        rows = {}
        rows["review table, every product (one query: a small catalogue's render)"], \
            table = timed(lambda: review.review_table(catalog))
        print(json.dumps(rows), flush=True)
        rows["most informative order computed from that table"], _ = timed(
            lambda: review.select(table, order=review.DEFAULT_ORDER, vectors_of=vectors))
        print(json.dumps(rows), flush=True)
        rows["the version's queue made and stored (once, in the background)"], queue = timed(
            lambda: review.informative_queue(catalog, version, vectors))
        rows["whole table and stored queue (a small catalogue's render)"], _ = timed(
            lambda: review.select(review.review_table(catalog), order=review.DEFAULT_ORDER, vectors_of=vectors,
                                  queue=review.informative_queue(catalog, version, vectors)))
        print(json.dumps(rows), flush=True)

        from streamlit.testing.v1 import AppTest

        os.environ["PRODUCTLENS_WORKSPACE"] = workspace
        os.environ["PRODUCTLENS_DATABASE"] = database
        at = AppTest.from_file(str(REPO / "app.py"), default_timeout=1800)
        at.run()
        started = time.perf_counter()
        at.switch_page("pages/review.py").run()
        rows["Review page, first render (AppTest)"] = round(time.perf_counter() - started, 2)
        if at.exception:
            sys.exit(f"the Review page failed: {at.exception}")
        started = time.perf_counter()
        at.run()
        rows["Review page, rerun (AppTest)"] = round(time.perf_counter() - started, 2)
        print(json.dumps(rows), flush=True)

        def render(step: str, *changes) -> None:
            for change in changes:
                change()
            started = time.perf_counter()
            at.run()
            rows[step] = round(time.perf_counter() - started, 2)
            if at.exception:
                sys.exit(f"{step} failed: {at.exception}")
            print(json.dumps({step: rows[step]}), flush=True)

        def status(value):
            return lambda: at.radio(key="review_status").set_value(value)

        def order(value):
            return lambda: at.selectbox(key="review_order").set_value(value)

        def predicted(values):
            return lambda: next(box for box in at.multiselect if box.label == "Predicted category").set_value(values)

        # Filters and other orders: the database filters, sorts and pages (review.filtered_page).
        render("Review page, only unlabelled (AppTest)", status("unlabelled"))
        render("Review page, only unlabelled, page 2", lambda: at.number_input(key="review_page").set_value(2))
        render("Review page, only unlabelled, least confident first", order("least confident"))
        render("Review page, newest first", status("all"), order("newest"))
        render("Review page, by category", order("category"))
        render("Review page, only disagreements", lambda: at.toggle(key="review_disagree").set_value(True))
        render("Review page, one predicted category, highest entropy",
               lambda: at.toggle(key="review_disagree").set_value(False), predicted(["category-007"]),
               order("highest entropy"))
        render("Review page, highest entropy, no filter", predicted([]))
        render("Review page, smallest margin, only unlabelled", order("smallest margin"), status("unlabelled"))
        render("Review page, random", order("random"), status("all"))
    write_result("review_scale_postgresql" if args.postgresql else "review_scale",
                 {"products": args.products, "dim": args.dim, "seconds": rows, "queue_length": len(queue),
                  "database": "PostgreSQL (local server, loopback)" if args.postgresql else "SQLite"})


if __name__ == "__main__":
    main()
