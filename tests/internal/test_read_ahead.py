import threading

import pytest

from core._internal.read_ahead import read_ahead


def test_reads_one_item_ahead_in_order_on_its_own_thread_and_finishes_there():
    started, threads = [], set()
    proceed = threading.Event()

    def read(item):
        started.append(item)
        threads.add(threading.current_thread().name)
        if item == 1:
            proceed.wait(5)  # the second read may only be under way, never done, while the first is used
        return item * 10

    finished = []
    pieces = read_ahead(range(4), read, finish=lambda: finished.append(threading.current_thread().name))
    assert next(pieces) == (0, 0)
    for _ in range(500):  # the read of item 1 starts on the reading thread
        if len(started) == 2:
            break
        threading.Event().wait(0.01)
    assert started == [0, 1], "exactly one read ahead"
    proceed.set()
    assert list(pieces) == [(1, 10), (2, 20), (3, 30)]
    assert threading.current_thread().name not in threads and len(threads) == 1
    assert finished and finished[0] in threads, "finish runs on the reading thread"
    assert list(read_ahead([], read)) == []


def test_a_failed_read_reaches_the_consumer():
    def read(item):
        if item == 2:
            raise OSError("disk gone")
        return item

    pieces = read_ahead(range(4), read)
    assert [next(pieces), next(pieces)] == [(0, 0), (1, 1)]
    with pytest.raises(OSError, match="disk gone"):
        next(pieces)
