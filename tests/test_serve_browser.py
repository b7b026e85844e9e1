"""The search page in a real headless browser: Debian's chromium driven by Playwright (its executable_path; Playwright's
own browser download is not used), against uvicorn serving a real tiny index on 127.0.0.1. The page's results must be
exactly index.search's for the same query.

A missing browser fails this test with a message saying how to install it; only COMPOSE_RETRIEVAL_NO_BROWSER=1
skips it (.ci/run installs chromium when it is missing)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import SAMPLE_TEXTS

NO_BROWSER_ENV = "COMPOSE_RETRIEVAL_NO_BROWSER"
CHROMIUM_ENV = "COMPOSE_RETRIEVAL_CHROMIUM"

if os.environ.get(NO_BROWSER_ENV, "").lower() in ("1", "true", "yes", "on"):
    pytest.skip(f"{NO_BROWSER_ENV} is set: the browser test is skipped on purpose", allow_module_level=True)


def chromium_executable() -> str:
    found = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found or not Path(found).exists():
        pytest.fail(f"no chromium found for the browser test: apt-get install chromium (Debian's), or set {CHROMIUM_ENV} "
                    f"to a Chromium executable, or set {NO_BROWSER_ENV}=1 to skip this test", pytrace=False)
    return found


@contextlib.contextmanager
def serving(app):
    """uvicorn in a background thread on a free port of 127.0.0.1; yields the base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f'playwright is missing: pip install -e ".[dev]" (or set {NO_BROWSER_ENV}=1 to skip)', pytrace=False)
    from compose_retrieval.serve import create_app
    from test_serve import make_tiny_index

    executable = chromium_executable()
    index = make_tiny_index(tmp_path_factory.mktemp("browser"))
    with serving(create_app(index, max_upload_bytes=2**16, default_k=6)) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield index, url, browser
        finally:
            browser.close()


@pytest.fixture
def page(site):
    index, url, browser = site
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    page.goto(url + "/")
    yield index, page, errors
    context.close()


def shown_results(page) -> list[tuple[int, str, float]]:
    page.wait_for_selector("#results[data-state=done]")
    items = page.get_by_role("list", name="Ranked results").get_by_role("listitem")
    return [(int(li.get_attribute("data-rank")), li.get_attribute("data-path"), float(li.get_attribute("data-score")))
            for li in items.all()]


def test_pick_an_indexed_image_type_a_text_and_see_index_search_results(page, tmp_path):
    index, page, errors = page
    from playwright.sync_api import expect

    expect(page.locator("#info")).to_contain_text(f"{len(index.paths)} images")
    samples = page.get_by_role("group", name="Images of the index").get_by_role("button")
    expect(samples).to_have_count(len(index.paths))  # 12 images, up to 18 samples shown
    query = index.paths[5]
    page.get_by_role("button", name=f"Pick {query}").click()
    expect(page.get_by_role("button", name=f"Pick {query}")).to_have_attribute("aria-pressed", "true")
    page.get_by_label("Modification text").fill(SAMPLE_TEXTS[3])
    page.get_by_label("Number of results").fill("5")
    page.get_by_role("button", name="Search").click()
    shown = shown_results(page)

    expected = index.search(index.file_path(query), SAMPLE_TEXTS[3], 5)
    assert [rank for rank, _, _ in shown] == [1, 2, 3, 4, 5]
    assert [path for _, path, _ in shown] == expected.paths and query not in expected.paths
    assert [score for _, _, score in shown] == pytest.approx(expected.scores, abs=1e-6)
    expect(page.get_by_role("status")).to_contain_text(f"5 results for {query}")
    for path in expected.paths:  # the thumbnails load from /files/ and show the rank
        image = page.get_by_role("img", name=f"Result {expected.paths.index(path) + 1}: {path}")
        expect(image).to_be_visible()
        assert image.evaluate("img => img.complete && img.naturalWidth > 0")
    # each visible result says its score as the page prints it
    first = page.get_by_role("listitem").first
    expect(first).to_contain_text(f"{expected.scores[0]:.4f}")
    expect(first).to_contain_text(expected.paths[0])
    shot = page.screenshot(path=str(tmp_path / "search-page.png"), full_page=True)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "search-page.png").read_bytes() == shot
    assert Image.open(io.BytesIO(shot)).size[0] == 1200
    assert errors == []


def test_upload_an_image(page, tmp_path):
    index, page, errors = page
    from playwright.sync_api import expect

    before = sorted(index.folder.rglob("*"))
    upload = tmp_path / "mine.png"
    Image.new("RGB", (30, 30), (200, 40, 40)).save(upload)
    page.get_by_label("Upload an image").set_input_files(str(upload))
    expect(page.locator("#chosen-caption")).to_have_text("mine.png (uploaded)")
    page.get_by_label("Modification text").fill(SAMPLE_TEXTS[0])
    page.get_by_role("button", name="Search").click()
    shown = shown_results(page)
    expected = index.search(Image.open(upload).convert("RGB"), SAMPLE_TEXTS[0], 6)
    assert [path for _, path, _ in shown] == expected.paths
    assert [score for _, _, score in shown] == pytest.approx(expected.scores, abs=1e-6)
    assert sorted(index.folder.rglob("*")) == before  # the upload was never written into the indexed folder
    assert errors == []


def test_errors_are_shown_on_the_page(page, tmp_path):
    index, page, errors = page
    from playwright.sync_api import expect

    page.get_by_role("button", name="Search").click()  # nothing chosen
    expect(page.get_by_role("alert")).to_have_text("Pick or upload an image, or type a text, first.")
    page.get_by_label("Modification text").fill("make it red")
    page.get_by_role("button", name="Search").click()  # a text alone, which this combiner cannot take
    expect(page.get_by_role("alert")).to_contain_text("give an image too")
    expect(page.get_by_role("alert")).to_contain_text("HTTP 400")
    notes = tmp_path / "notes.png"
    notes.write_text("not really a PNG")
    page.get_by_label("Upload an image").set_input_files(str(notes))
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("alert")).to_contain_text("the uploaded file 'notes.png' is not an image")
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * 2**17)  # over the server's 64 KB: refused on the page, before sending
    page.get_by_label("Upload an image").set_input_files(str(big))
    expect(page.get_by_role("alert")).to_contain_text("larger than the server accepts")
    assert [e for e in errors if "400" not in e] == []  # the browser logs the 400 responses themselves


def test_a_link_carries_the_query(site):
    index, url, browser = site
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 900, "height": 700})
    page = context.new_page()
    query = "more/shape-09.png"
    page.goto(f"{url}/?path=more%2Fshape-09.png&text=remove+blue+triangle&k=3")
    expect(page.locator("#chosen-caption")).to_have_text(query)
    expect(page.get_by_label("Modification text")).to_have_value("remove blue triangle")
    page.get_by_role("button", name="Search").click()
    expected = index.search(index.file_path(query), "remove blue triangle", 3)
    assert [path for _, path, _ in shown_results(page)] == expected.paths
    expect(page.get_by_role("status")).to_contain_text("(the query image itself left out)")
    assert page.get_by_role("img", name="The query image").evaluate("img => img.naturalWidth") > 0
    context.close()
