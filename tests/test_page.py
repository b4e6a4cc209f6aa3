"""The page at `/`, in a real browser: Playwright driving Debian's Chromium (installed by `make install`) against the
real gateway and Triton. A digit gets its label and a heat map over it, a batch shows as a grid with its bad file's
error, a wrong API key shows the auth error, the page works by keyboard and at phone width, without console errors.

Set VGG_PAGE_SCREENSHOTS=docs to (re)write the README's screenshots docs/page-photo.png and docs/page-batch.png.
"""

from __future__ import annotations

import base64
import os
import re
from pathlib import Path

import httpx
import pytest
from support.maps import API_KEY, PROJECT_ROOT, digit_picture

pytest_plugins = ("support.gateway", "support.maps")
CHROMIUM = os.environ.get("VGG_CHROMIUM", "/usr/bin/chromium")
STATIC = PROJECT_ROOT / "server" / "gateway" / "static"
DIGIT_BOX = (228, 18, 60)  # x, y, side of the 0 on its 300x96 canvas
STATUS_LINE = re.compile(r"^Failed to load resource: the server responded with a status of 4\d\d")

# The heat layer's pixels: where it is most opaque (the hottest cell; opacity grows with the value), in original
# image pixels, and how many pixels are painted at all.
HEAT_JS = """(canvas) => {
  const { width, height } = canvas;
  const data = canvas.getContext("2d").getImageData(0, 0, width, height).data;
  let best = -1, bestX = 0, painted = 0, leftMax = 0;
  for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) {
    const alpha = data[(y * width + x) * 4 + 3];
    if (alpha > 0) painted++;
    if (alpha > best) { best = alpha; bestX = x; }
    if (x < width / 3 && alpha > leftMax) leftMax = alpha;
  }
  return { width, height, painted, best, bestX, leftMax };
}"""


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium (or set VGG_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


class Console:
    """Console errors and uncaught exceptions of a page."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def beyond_status_lines(self) -> list[str]:
        """Errors other than Chromium's own line for a 4xx answer, which the page shows as a message."""
        return [e for e in self.errors if not STATUS_LINE.match(e)]


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def screenshot(page, name: str) -> None:
    folder = os.environ.get("VGG_PAGE_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(PROJECT_ROOT / folder / name), full_page=True)


def digit_file(tmp_path: Path, name: str, label: int, box: tuple[int, int, int] = DIGIT_BOX) -> Path:
    path = tmp_path / name
    path.write_bytes(digit_picture(label, box, size=(300, 96)))
    return path


def open_page(page, url: str, pipeline: str | None = None) -> None:
    page.goto(url + "/")
    page.wait_for_selector("#pipeline option[value='flips']", state="attached")
    if pipeline:
        page.select_option("#pipeline", pipeline)


def test_the_page_is_self_contained_under_a_strict_policy(maps_gateway, keyed_maps_gateway):
    response = httpx.get(maps_gateway.url + "/", timeout=10)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe" not in policy
    html = response.text
    assert not re.search(r"<script(?![^>]*\bsrc=)", html)  # no inline script
    assert not re.search(r"\s(on\w+|style)=", html)  # no inline handlers or styles
    for name, kind in (("page.js", "text/javascript"), ("page.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        served = httpx.get(f"{maps_gateway.url}/static/{name}", timeout=10)
        assert served.status_code == 200 and served.headers["content-type"].startswith(kind)
        assert served.content == (STATIC / name).read_bytes()
        assert not re.search(rb"https?://", served.content.replace(b"http://www.w3.org/2000/svg", b""))  # no CDN
    assert httpx.get(maps_gateway.url + "/static/index.html", timeout=10).status_code == 404
    assert httpx.get(keyed_maps_gateway.url + "/", timeout=10).status_code == 200  # code only: no key needed
    assert httpx.get(keyed_maps_gateway.url + "/v1/pipelines", timeout=10).status_code == 401


def test_a_digit_gets_its_label_and_a_heat_map_over_it(page, maps_gateway, tmp_path):
    console = Console(page)
    open_page(page, maps_gateway.url, "flips")
    page.set_input_files("#files", str(digit_file(tmp_path, "zero.png", 0)))
    page.click("#classify")
    card = page.wait_for_selector("#results .card.done")
    assert card.query_selector(".predictions li .label").inner_text() == "0"
    assert re.search(r"\d+ ms in the browser, \d+ ms in the gateway", card.query_selector(".latency").inner_text())
    x, _, side = DIGIT_BOX
    centre = x + side / 2
    canvas = card.query_selector(".heat-layer")
    for view in ["fused", *card.eval_on_selector(".view-select", "s => [...s.options].map(o => o.value)")[1:]]:
        card.query_selector(".view-select").select_option(view)
        heat = canvas.evaluate(HEAT_JS)
        # drawn: one stride-sized tile per cell (at Q=64 on this 300x96 image: a 1x5 band, 40 % of it)
        assert heat["painted"] > heat["width"] * heat["height"] / 3, (view, heat)
        hottest_x = heat["bestX"] * 300 / heat["width"]
        assert abs(hottest_x - centre) <= 64, (view, hottest_x, heat)  # its window holds the digit
        assert heat["leftMax"] < 0.6 * heat["best"], (view, heat)  # and the far left third stays cold
    assert card.eval_on_selector(".view-select", "s => s.options.length") == 5  # fused + 2 scales x 2 mirrors
    card.query_selector(".view-select").select_option("fused")
    screenshot(page, "page-photo.png")
    assert console.errors == []


def test_a_batch_shows_as_a_grid_with_each_files_own_error(page, maps_gateway, tmp_path):
    console = Console(page)
    open_page(page, maps_gateway.url, "pair")
    files = [digit_file(tmp_path, f"digit_{label}.png", label, (40 + 60 * label % 180, 20, 56)) for label in (2, 3, 7)]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    page.set_input_files("#files", [str(files[0]), str(broken), str(files[1]), str(files[2])])
    page.click("#classify")
    page.wait_for_function("() => document.querySelectorAll('#results .card.done, #results .card.failed').length === 4")
    titles = page.eval_on_selector_all("#results .card .card-title", "els => els.map(e => e.textContent)")
    assert titles == ["digit_2.png", "broken.png", "digit_3.png", "digit_7.png"]  # the order they were chosen in
    labels = page.eval_on_selector_all("#results .card.done", "cards => cards.map(c => "
                                       "c.querySelector('.predictions .label').textContent)")
    assert labels == ["2", "3", "7"]
    error = page.inner_text("#results .card.failed .error")
    assert error.startswith("422 invalid_image:"), error
    assert page.inner_text("#status") == "done: 3 classified, 1 failed"
    screenshot(page, "page-batch.png")
    assert console.beyond_status_lines() == []


def test_a_dropped_image_is_classified(page, maps_gateway):
    console = Console(page)
    open_page(page, maps_gateway.url, "pair")
    data = base64.b64encode(digit_picture(4, (20, 20, 60), size=(300, 96))).decode()
    transfer = page.evaluate_handle("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
        return transfer;
    }""", data)
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    card = page.wait_for_selector("#results .card.done")
    assert card.query_selector(".card-title").inner_text() == "dropped.png"
    assert card.query_selector(".predictions li .label").inner_text() == "4"
    assert console.errors == []


def test_a_wrong_api_key_shows_the_auth_error(page, keyed_maps_gateway, tmp_path):
    console = Console(page)
    page.goto(keyed_maps_gateway.url + "/")
    error = page.wait_for_selector("#page-error:not([hidden])")
    assert "401 unauthorized: missing bearer token" in error.inner_text()
    page.fill("#api-key", "wrong-key")
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("() => document.querySelector('#page-error').textContent.includes('invalid API key')")
    assert "(check the API key)" in page.inner_text("#page-error")
    page.fill("#api-key", API_KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_selector("#page-error[hidden]", state="attached")
    page.wait_for_selector("#pipeline option[value='pair']", state="attached")
    page.select_option("#pipeline", "pair")
    page.set_input_files("#files", str(digit_file(tmp_path, "six.png", 6, (100, 20, 60))))
    page.click("#classify")
    assert page.wait_for_selector("#results .card.done").query_selector(".predictions .label").inner_text() == "6"
    assert console.beyond_status_lines() == []


def test_keyboard_labels_and_phone_width(browser, maps_gateway, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    page = context.new_page()
    console = Console(page)
    try:
        open_page(page, maps_gateway.url)
        for label in ("Pipeline", "Classes shown", "API key", "Images"):
            assert page.get_by_label(label, exact=False).count() >= 1, label
        page.focus("#pipeline")
        order = ["pipeline"]
        for _ in range(4):
            page.keyboard.press("Tab")
            order.append(page.evaluate("() => document.activeElement.id"))
        assert order == ["pipeline", "top-k", "api-key", "files", "classify"]
        page.select_option("#pipeline", "pair")
        page.set_input_files("#files", str(digit_file(tmp_path, "nine.png", 9, (120, 20, 60))))
        page.focus("#classify")
        page.keyboard.press("Enter")  # submits the form
        card = page.wait_for_selector("#results .card.done")
        assert card.query_selector(".predictions .label").inner_text() == "9"
        for label in ("Class", "Map"):
            assert card.query_selector(f"label:has-text('{label}') select") is not None
        overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
        widest = page.evaluate("""() => [...document.querySelectorAll("body *")].map(e => [
            e.getBoundingClientRect().right, `${e.tagName}#${e.id}.${e.className}`]).sort((a, b) => b[0] - a[0])
            .slice(0, 3)""")
        assert overflow <= 0, f"{overflow} px wider than a 390-px phone: {widest}"
        assert console.errors == []
    finally:
        context.close()
