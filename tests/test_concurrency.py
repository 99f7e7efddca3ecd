"""Several processes correcting the same products at once: no lost update, no lock errors."""

import multiprocessing
import random
import time
from queue import Empty

import pytest

from conftest import demo_photos
from core.storage import ingest
from core.storage.catalog import Catalog

# Runs on SQLite and on a real PostgreSQL server (conftest.database).
pytestmark = pytest.mark.usefixtures("database")

LABELS = ["Lemon", "Lime", "Orange", "Banana"]


def _worker(workspace: str, name: str, rounds: int, queue) -> None:
    catalog = Catalog(workspace)
    rng = random.Random(name)
    applied = conflicts = 0
    try:
        for _ in range(rounds):
            product = rng.choice(catalog.product_ids())
            seen = catalog.current_label(product)  # what this person's page shows
            changed, lost = catalog.change_labels([(product, rng.choice(LABELS), seen)], author=name)
            applied += changed
            conflicts += len(lost)
        queue.put((name, applied, conflicts, None))
    except Exception as error:  # reported to the parent, which fails the test
        queue.put((name, applied, conflicts, repr(error)))


def test_parallel_writers_never_lose_an_update(workspace):
    catalog = Catalog(workspace)
    ingest.import_paths(catalog, demo_photos("Lemon")[:3], label="Lemon")
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_worker, args=(str(workspace), f"user{i}", 150, queue)) for i in range(4)]
    for worker in workers:
        worker.start()
    results = []
    deadline = time.time() + 300
    while len(results) < len(workers):
        try:
            results.append(queue.get(timeout=1))
        except Empty:  # a worker that died before reporting fails the test now, not after the timeout
            crashed = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
            assert not crashed and time.time() < deadline, f"writers crashed or hung: exit codes {crashed}"
    for worker in workers:
        worker.join(timeout=60)
    assert all(error is None for *_, error in results), results
    applied = sum(r[1] for r in results)
    history = list(reversed(catalog.label_history()))
    human = [event for event in history if event.source == "human"]
    assert len(human) == applied
    # Every change was made against the label it replaced: the chain per product never breaks.
    current: dict[int, str | None] = {}
    for event in history:
        assert event.previous_label == current.get(event.product_id), event
        current[event.product_id] = event.label
    assert current == {pid: catalog.current_label(pid) for pid in current}
