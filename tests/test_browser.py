"""The web page in headless Chromium (Debian's chromium, driven by Playwright's Python package):
upload an image, the verdict appears. Skipped where Chromium is not installed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_upload_shows_the_verdict(server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (30, 140, 90)).save(image)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    SCREENSHOTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            # waits end on a condition; the limit only catches a hang (slow, busy machines)
            page.set_default_timeout(180_000)
            page.goto(server + "/")
            page.click("details.key summary")
            page.fill("#apikey", "s3cret")
            page.dispatch_event("#apikey", "change")
            page.set_input_files("#files", [str(image), str(broken)])
            page.wait_for_selector(".card .verdict")
            page.wait_for_function("document.querySelectorAll('.card').length == 2")
            verdicts = page.locator(".card .verdict").all_inner_texts()
            assert any("Likely" in v and "%" in v for v in verdicts), verdicts
            assert any("Could not score (415)" in v for v in verdicts), verdicts
            assert (
                "Provenance:" in page.locator(".card").first.inner_text()
                or "Provenance:" in page.locator(".card").last.inner_text()
            )
            page.screenshot(path=str(SCREENSHOTS / "web-page.png"), full_page=True)
        finally:
            browser.close()
    assert (SCREENSHOTS / "web-page.png").stat().st_size > 5000
