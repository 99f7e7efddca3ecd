"""How long merchandisers wait in the browser, measured with a real Chromium.

1. builds a workspace with the grocery train split (2,640 labelled products),
   embedded and with a trained head (set-up, not timed);
2. starts ``streamlit run app.py`` on loopback and, with Playwright:
   * opens Explore and times until the UMAP plot of 2,640 products is drawn
     (cold: UMAP computed; warm: reopened, cached projection);
   * uploads 50 val photos (one pixel changed, so they are new on every run) on
     the Upload page and times "Import and predict" until the predictions are shown;
     then 50 others on the reloaded page: the browser has then compiled the results
     table's code once (a fresh browser profile pays for that on its first table);
   * labels 50 cards on the Review page by pressing ``1`` (the focused card's top
     suggestion; the focus then moves on), and 50 more by clicking the focused
     card's top-suggestion button, each time waiting until the label is stored
     and the page has finished its rerun: labels per minute, keys vs clicks.
     (A script moves no mouse: the real difference for a person is larger.)

    python benchmarks/app_latency.py [--dataset DIR] [--keep WORKSPACE]
Prints one JSON object on the last line.
"""

from __future__ import annotations

import argparse
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

DEFAULT_DATASET = REPO.parent / "shared" / "datasets" / "grocery"
CARDS = 50


def prepare(workspace: Path, dataset: Path) -> None:
    from core.features.embeddings import Embedder, embed_catalog
    from core.model.prediction import predict_catalog
    from core.model.training import train_version
    from core.storage import ingest
    from core.storage.catalog import Catalog

    catalog = Catalog(workspace)
    if catalog.active_model_version() is None:
        ingest.import_paths(catalog, [dataset / "train"])
        embedder = Embedder()
        embed_catalog(catalog, embedder)
        predict_catalog(catalog, train_version(catalog, embedder, augmented_views=0))
    catalog.close()


def fresh_copies(paths: list[Path], folder: Path) -> list[Path]:
    """Copies of ``paths`` with one random pixel, saved as JPEG: photos no earlier run has stored."""
    import random

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in paths:
        image = Image.open(path).convert("RGB")
        image.putpixel((0, 0), tuple(random.randrange(256) for _ in range(3)))
        copy = folder / path.name
        image.save(copy, quality=95)
        copies.append(copy)
    return copies


def upload(page, url: str, photos: list[Path]) -> tuple[float, float]:
    """Upload ``photos`` on a freshly loaded Upload page; seconds from the click until the summary line
    shows, and until the upload's run has finished in the browser (its results table drawn)."""
    page.goto(f"{url}/upload")
    wait_idle(page)  # includes loading the backbone once per server
    page.locator("input[type=file]").set_input_files([str(p) for p in photos])
    page.wait_for_timeout(3000)  # let the browser finish sending the files
    clicked = time.perf_counter()
    page.get_by_role("button", name="Import and predict").click()
    page.get_by_text(f"{len(photos)} new products").wait_for(timeout=600_000)
    summary_seconds = time.perf_counter() - clicked
    # The summary comes from the upload's own run, so no settling pause is needed (wait_idle's 0.3 s,
    # which the measurement included up to stop 26): done when that run has finished in the browser.
    wait_idle(page, settle_ms=0)
    return summary_seconds, time.perf_counter() - clicked


def human_labels(catalog) -> int:
    return catalog.count_label_events("human")


def labels_per_minute(page, url: str, catalog, how: str, cards: int) -> float:
    """Label ``cards`` cards on Review with the key ``1`` or by clicking; labels per minute."""
    page.goto(f"{url}/review")
    page.get_by_role("button", name="Accept prediction").wait_for(timeout=600_000)
    wait_idle(page)
    started = time.perf_counter()
    for _ in range(cards):
        before, card = human_labels(catalog), focused_product(page)
        if how == "keys":
            page.keyboard.press("1")
        else:
            page.locator(".st-key-focus-pick-1 button").first.click()  # as the key listener does
        # Done when the label is stored, the next card has the focus and the rerun has finished: what a
        # person waits for before the next key or click.
        deadline = time.time() + 120
        while human_labels(catalog) == before:
            if time.time() > deadline:
                raise RuntimeError(f"a {how} label was not stored within 120 s")
            time.sleep(0.05)
        moved = time.time() + 5  # the focus normally moves with the label's rerun
        while focused_product(page) in (card, None) and time.time() < moved:
            time.sleep(0.05)
        wait_idle(page)
    return cards / (time.perf_counter() - started) * 60


def focused_product(page) -> int | None:
    checkbox = page.locator(".st-key-focused-card [class*='st-key-select-']").first
    try:
        return int(checkbox.get_attribute("class", timeout=1000).split("st-key-select-", 1)[1].split()[0])
    except Exception:  # between two renders there may be no focused card for a moment
        return None


def wait_idle(page, timeout=600_000, settle_ms=300):
    """Until Streamlit's "running" indicator is gone; first ``settle_ms`` for a rerun to begin."""
    if settle_ms:
        page.wait_for_timeout(settle_ms)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT_DATASET)
    parser.add_argument("--keep", type=Path, help="workspace to build/reuse instead of a temporary one")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    workspace = args.keep or Path(tempfile.mkdtemp(prefix="productlens-latency-"))
    started = time.perf_counter()
    prepare(workspace, args.dataset)
    setup_seconds = time.perf_counter() - started
    from core.storage.catalog import Catalog

    catalog = Catalog(workspace)
    # A reused workspace starts as prepared: what earlier runs added leaves every listing (archived).
    train = str((args.dataset / "train").resolve())
    added = [product.id for product in catalog.products() if not (product.source or "").startswith(train)]
    catalog.archive_products(added, reason="app_latency.py: reset to the prepared catalogue")
    products = catalog.count_products()
    # Val photos with one pixel changed: new bytes on every run, so the upload always creates 50 new products.
    scratch = Path(tempfile.mkdtemp(prefix="productlens-latency-photos-"))
    val = sorted((args.dataset / "val").rglob("*.jpg"))
    photos = fresh_copies(val[::5][:50], scratch / "upload")
    again = fresh_copies(val[4::5][:50], scratch / "again")  # a second upload in the same browser
    # 100 more unlabelled, predicted products for the labelling runs (set-up, not timed): 150 unlabelled
    # cards for 100 labels, so the focus never runs into labelled cards near the end.
    from core.features.embeddings import Embedder
    from core.jobs import import_and_predict

    extra = fresh_copies(val[2::5][:CARDS] + val[3::5][:CARDS], scratch / "extra")
    import_and_predict(catalog, [(p.name, p.read_bytes()) for p in extra], Embedder())
    # Cold means cold: no projection cached from an earlier run.
    for cached in (workspace / "cache").glob("umap-*.npy"):
        cached.unlink()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PRODUCTLENS_WORKSPACE=str(workspace), TF_CPP_MIN_LOG_LEVEL="3")
    server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                               "--server.address", "127.0.0.1", "--server.headless", "true"],
                              cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
        chromium = shutil.which("chromium") or "/usr/bin/chromium"
        with sync_playwright() as driver:
            browser = driver.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"])
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            explore = {}
            for attempt in ("cold", "warm"):
                opened = time.perf_counter()
                page.goto(f"{url}/explore")
                page.locator(".js-plotly-plot").first.wait_for(timeout=600_000)
                explore[attempt] = time.perf_counter() - opened
            uploads = [upload(page, url, batch) for batch in (photos, again)]
            speed = {how: labels_per_minute(page, url, catalog, how, CARDS) for how in ("keys", "clicks")}
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    (summary_seconds, upload_seconds), (_, again_seconds) = uploads
    result = {"upload_photos": len(photos), "upload_to_predictions_seconds": round(upload_seconds, 1),
              "upload_to_summary_seconds": round(summary_seconds, 1),
              "second_upload_to_predictions_seconds": round(again_seconds, 1),
              "explore_products": products, "explore_first_render_cold_seconds": round(explore["cold"], 1),
              "explore_first_render_warm_seconds": round(explore["warm"], 1),
              "labelling_cards": CARDS, "labels_per_minute_keys": round(speed["keys"], 1),
              "labels_per_minute_clicks": round(speed["clicks"], 1),
              "review_catalogue_products": catalog.count_products(), "setup_seconds": round(setup_seconds, 1)}
    write_result("app_latency", result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
