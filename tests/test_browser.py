"""End to end in a real browser: `streamlit run app.py` driven by Playwright in Debian's Chromium.

Goes through the whole flow a merchandiser does: load the demo catalogue, train, upload
new photos, see their predictions, correct one, retrain, and open the Explore map.
Screenshots of each page are saved under test-artifacts/ (git-ignored).
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from conftest import demo_photos

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

import playwright.sync_api  # noqa: E402  (requirements-test.txt)

if not Path(CHROMIUM).exists():  # .ci/run installs it; a developer may not have it yet
    pytest.fail(f"Chromium not found at {CHROMIUM}: install it with `apt-get install chromium`", pytrace=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(workspace, log_path, *options):
    """``streamlit run app.py`` on a free port (the README's command; ``options`` add flags); wait until healthy."""
    port = free_port()
    env = dict(os.environ, PRODUCTLENS_WORKSPACE=str(workspace), TF_CPP_MIN_LOG_LEVEL="3")
    log = open(log_path, "w")
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
                                *options], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    process.log = log
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return process, url, port
        except OSError:
            time.sleep(0.5)
    process.kill()
    pytest.fail(f"streamlit did not start:\n{Path(log_path).read_text()[-2000:]}")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("browser-ws")
    process, url, _port = start_server(workspace, tmp_path_factory.mktemp("logs") / "streamlit.log",
                                       "--server.address", "127.0.0.1", "--server.headless", "true",
                                       "--browser.gatherUsageStats", "false")
    yield url, workspace
    process.terminate()
    process.wait(timeout=30)
    process.log.close()


@pytest.fixture(scope="module")
def page(server):
    with playwright.sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        yield context.new_page()
        browser.close()


def shot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_function("() => [...document.images].every(image => image.complete)", timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def wait_idle(page, timeout=240_000):
    """Wait until Streamlit has finished the current run."""
    page.wait_for_timeout(500)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout)


def open_page(page, url, name):
    page.goto(f"{url}/{name}")
    wait_idle(page)


def retrain(page, url, done_text, name):
    open_page(page, url, "train")
    page.get_by_role("button", name="Retrain now").click()
    page.get_by_text(done_text).wait_for(timeout=300_000)
    wait_idle(page)
    shot(page, name)


def new_photos(tmp_path, count=4):
    """Real photos that are not in the demo catalogue yet (mirrored, so new bytes)."""
    paths = []
    for category in ("Lemon", "Banana", "Orange", "Pineapple")[:count]:
        target = tmp_path / f"new-{category.lower()}.jpg"
        ImageOps.mirror(Image.open(demo_photos(category)[2])).save(target, quality=92)
        paths.append(target)
    return paths


def test_whole_flow_in_the_browser(server, page, tmp_path):
    url, workspace = server
    # A deep link is the first request the fresh server sees: it must still get the app's router.
    open_page(page, url, "review")
    page.get_by_text("No products yet").wait_for()
    page.get_by_label("Your name").first.wait_for()
    assert page.get_by_role("link", name="common").count() == 0, "pages/ must not be listed file by file"
    open_page(page, url, "")
    page.get_by_text("Your catalogue is empty").wait_for()
    shot(page, "01-home-empty")
    page.get_by_role("button", name="Load demo catalogue").click()
    page.get_by_text("Awaiting review").wait_for(timeout=300_000)  # includes computing the features
    shot(page, "02-home-demo")

    retrain(page, url, "trained in", "03-train")

    open_page(page, url, "upload")
    started = time.perf_counter()
    page.locator("input[type=file]").set_input_files([str(p) for p in new_photos(tmp_path)])
    page.get_by_text("new-lemon.jpg").first.wait_for()
    page.get_by_role("button", name="Import and predict").click()
    page.get_by_text("4 new products").wait_for(timeout=300_000)
    wait_idle(page)
    print(f"upload of 4 photos to predictions shown: {time.perf_counter() - started:.1f} s")
    from core.storage.catalog import Catalog
    catalog = Catalog(workspace)
    predictions = catalog.predictions(catalog.active_model_version().id)
    new = [product for product in catalog.products() if product.filename.startswith("new-")]
    assert len(new) == 4
    from core.curation import review
    expected = review.prediction_table(catalog, [product.id for product in new]).set_index("file")
    # The results table draws on a canvas; its accessible grid holds the same cells as text.
    for product in new:  # each new product's row shows its predicted category and confidence
        name_cell = page.get_by_role("gridcell", name=product.filename, exact=True, include_hidden=True)
        # The grid fills its accessible table after the canvas is drawn, a moment after the run ends.
        name_cell.first.wait_for(state="attached", timeout=60_000)
        row = page.locator("[role=row]").filter(has=name_cell)
        cells = row.get_by_role("gridcell", include_hidden=True).all_text_contents()
        assert expected.loc[product.filename, "prediction"] in cells, (product.filename, cells)
        assert abs(float(cells[-2]) - 100 * predictions[product.id]["confidence"]) < 1e-3, cells
    shot(page, "04-upload-results")

    open_page(page, url, "review")
    first_pick = page.locator("[class*='st-key-pick-']").first
    first_pick.wait_for()
    key = first_pick.get_attribute("class").split("st-key-pick-", 1)[1].split()[0]
    product_id, number = key.split("-")
    catalog = Catalog(workspace)
    label = catalog.predictions(catalog.active_model_version().id)[int(product_id)]["labels"][int(number) - 1]
    first_pick.locator("button").click()
    wait_idle(page)
    shot(page, "05-review")
    event = Catalog(workspace).label_history(int(product_id))[0]
    assert event.label == label and event.source == "human"

    retrain(page, url, "Model v2 trained", "06-train-v2")

    open_page(page, url, "explore")
    page.locator(".js-plotly-plot").first.wait_for(timeout=180_000)
    wait_idle(page)
    shot(page, "07-explore")
    assert page.locator(".js-plotly-plot").count() >= 1


def listening_addresses(port: int) -> set[str]:
    """The local addresses a TCP socket listens on for ``port``, from /proc/net/tcp and tcp6."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_default_server_is_loopback_only_and_suspicious_labels_never_hang_it(page, tmp_path, embedder):
    """The README's `streamlit run app.py` (no address flag): loopback only. Suspicious labels twice, then SIGTERM."""
    from core.features.embeddings import embed_catalog
    from core.model.head import HeadClassifier
    from core.model.training import train_version
    from core.storage import Catalog, load_demo

    catalog = Catalog(tmp_path / "ws")
    load_demo(catalog)
    embed_catalog(catalog, embedder)
    train_version(catalog, embedder, HeadClassifier(), augmented_views=0)
    catalog.close()
    process, url, port = start_server(tmp_path / "ws", tmp_path / "streamlit.log")
    try:
        assert listening_addresses(port) == {"0100007F"}, "listens on 127.0.0.1 only, not every interface"
        open_page(page, url, "suspicious")
        for _ in range(2):  # twice in a row: the first run must not leave anything behind
            page.get_by_role("button", name="Find suspicious labels").click()
            page.get_by_text("Flagged labels").wait_for(timeout=120_000)
            wait_idle(page, timeout=120_000)
        assert not children(process.pid), "no forked worker processes left behind"
        page.get_by_role("button", name="Find suspicious labels").click()  # SIGTERM in the middle of a run
        page.wait_for_timeout(300)
        started = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
        print(f"server stopped {time.perf_counter() - started:.1f} s after SIGTERM")
    finally:
        if process.poll() is None:
            process.kill()
        process.log.close()
    assert "Traceback" not in (tmp_path / "streamlit.log").read_text()


@pytest.fixture()
def trained_demo(tmp_path, embedder):
    """A workspace with the demo catalogue, embedded, a head trained and every product predicted."""
    from core.features.embeddings import embed_catalog
    from core.model.head import HeadClassifier
    from core.model.prediction import predict_catalog
    from core.model.training import train_version
    from core.storage import Catalog, load_demo

    catalog = Catalog(tmp_path / "ws")
    load_demo(catalog)
    embed_catalog(catalog, embedder)
    predict_catalog(catalog, train_version(catalog, embedder, HeadClassifier(), augmented_views=0))
    catalog.close()
    return tmp_path / "ws"


def focused_card(page, catalog):
    """``(product id, its suggestions in order)`` of the card the keyboard acts on, once the page is complete."""
    page.get_by_role("button", name="Accept prediction").wait_for(timeout=120_000)
    wait_idle(page)
    key = page.locator(".st-key-focused-card [class*='st-key-select-']").first.get_attribute("class")
    product = int(key.split("st-key-select-", 1)[1].split()[0])
    return product, catalog.predictions(catalog.active_model_version().id)[product]["labels"]


def until(condition, what, timeout=60.0):
    """Wait for ``condition()`` (a key press reruns the page; its effect lands a moment later)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting until {what}")


def test_review_from_the_keyboard(page, trained_demo, tmp_path):
    from core.storage import Catalog

    process, url, _port = start_server(trained_demo, tmp_path / "streamlit.log", "--server.headless", "true")
    catalog = Catalog(trained_demo, create=False)
    try:
        open_page(page, url, "review")
        first, suggestions = focused_card(page, catalog)
        assert len(suggestions) >= 3, "the focused card offers every suggestion for keys 1-9"
        page.keyboard.press("2")
        until(lambda: catalog.current_label(first) == suggestions[1], "2 gives the 2nd suggestion")
        assert catalog.label_history(first)[0].source == "human"
        until(lambda: focused_card(page, catalog)[0] != first, "the focus moves to the next card")
        second, second_suggestions = focused_card(page, catalog)
        page.keyboard.press("1")  # a digit again, on the newly focused card
        until(lambda: catalog.current_label(second) == second_suggestions[0], "1 labels the next card too")
        until(lambda: focused_card(page, catalog)[0] not in (first, second), "the focus moves on again")
        third, _ = focused_card(page, catalog)
        page.keyboard.press("ArrowRight")
        until(lambda: focused_card(page, catalog)[0] not in (first, second, third), "→ moves the focus")
        page.keyboard.press("ArrowLeft")
        until(lambda: focused_card(page, catalog)[0] == third, "← moves it back")
        before = catalog.current_label(third)
        predicted = catalog.predictions(catalog.active_model_version().id)[third]["label"]
        page.keyboard.press("Enter")
        until(lambda: catalog.current_label(third) == predicted and catalog.label_history(third)[0].source == "human",
              "Enter accepts the prediction")
        until(lambda: focused_card(page, catalog)[0] != third, "the focus moves on")
        page.keyboard.press("x")
        focused, _ = focused_card(page, catalog)
        until(lambda: page.locator(f".st-key-select-{focused} input").is_checked(), "X selects the focused card")
        page.keyboard.press("z")
        until(lambda: catalog.current_label(third) == before, "Z undoes the last action (the Enter)")
        page.keyboard.press("?")
        page.get_by_text("give the focused card its 1st").wait_for(timeout=60_000)
        shot(page, "08-review-keys")

        # Keys typed into a field are text, not shortcuts; "Other category…" applies the choice at once.
        target, _ = focused_card(page, catalog)
        history = len(catalog.label_history(target))
        picker = page.locator(f".st-key-any-{target} input")
        picker.click()
        picker.type("2")
        time.sleep(2)
        assert len(catalog.label_history(target)) == history, "a digit typed into the picker labelled nothing"
        picker.fill("")
        picker.type("Zucc")
        page.get_by_role("option", name="Zucchini").first.click()
        until(lambda: catalog.current_label(target) == "Zucchini",
              f"one step, no second 'Set' button (label now {catalog.current_label(target)!r})")
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.log.close()


ISOLATED_POINT = """() => {
  // The point farthest from any other on screen: hover and click cannot hit a neighbour instead.
  const plot = document.querySelector('.st-key-catalogue_map .js-plotly-plot');
  const layout = plot._fullLayout, box = plot.getBoundingClientRect(), points = [];
  for (const trace of plot._fullData)
    for (let i = 0; i < trace.x.length; i++)
      points.push({x: box.left + layout._size.l + layout.xaxis.l2p(trace.x[i]),
                   y: box.top + layout._size.t + layout.yaxis.l2p(trace.y[i]), product: trace.customdata[i][0]});
  let best = null, bestGap = -1;
  for (const a of points) {
    let gap = Infinity;
    for (const b of points) if (b !== a) gap = Math.min(gap, Math.hypot(a.x - b.x, a.y - b.y));
    if (gap > bestGap) { best = a; bestGap = gap; }
  }
  return best;
}"""


SELECTBOX_SHOWS = """(text) => [...document.querySelectorAll('[data-testid="stSelectbox"]')].some(
  box => (box.innerText + [...box.querySelectorAll('input')].map(input => input.value).join(' ')).includes(text))"""


def test_the_map_shows_a_photo_on_hover_and_opens_the_product_on_click(page, trained_demo, tmp_path):
    from core.storage import Catalog, preview_data_url

    server, url, _port = start_server(trained_demo, tmp_path / "streamlit.log", "--server.headless", "true")
    try:
        open_page(page, url, "explore")
        page.locator(".st-key-catalogue_map .js-plotly-plot").first.wait_for(timeout=180_000)
        wait_idle(page)
        catalog = Catalog(trained_demo)
        photo = page.locator("#productlens-map-photo img")
        hovered = None
        for _ in range(10):  # the page may still reflow (a scrollbar appears): aim again until on target
            point = page.evaluate(ISOLATED_POINT)
            page.mouse.move(point["x"] - 30, point["y"] - 30)
            page.mouse.move(point["x"], point["y"], steps=5)
            page.wait_for_timeout(400)
            hovered = page.evaluate("() => { const data = document.querySelector("
                                    "'.st-key-catalogue_map .js-plotly-plot')._hoverdata;"
                                    " return data && data.length ? data[0].customdata[0] : null; }")
            if hovered == point["product"]:
                break
        assert hovered == point["product"]
        photo.wait_for(state="visible", timeout=10_000)
        assert photo.get_attribute("src") == preview_data_url(catalog, int(hovered))
        shot(page, "08-explore-hover")

        page.mouse.click(point["x"], point["y"])
        panel = page.locator(".st-key-map-product")
        panel.wait_for(timeout=60_000)
        wait_idle(page)
        product = catalog.get_product(int(hovered))
        assert product.filename in panel.inner_text()
        assert f"label: {catalog.current_labels().get(product.id, '(unlabelled)')}" in panel.inner_text()
        shot(page, "09-explore-open-product")
        panel.get_by_role("button", name="Similar products").click()
        page.wait_for_function(SELECTBOX_SHOWS, arg=f"#{product.id} {product.filename}", timeout=60_000)
        wait_idle(page)
        shot(page, "10-similar-from-map")
        assert page.locator("[data-testid='stImage']").count() >= 2  # the product and its neighbours
    finally:
        server.terminate()
        server.wait(timeout=30)
        server.log.close()
