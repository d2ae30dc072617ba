"""The web page in headless Chromium (Debian's chromium, driven by Playwright's Python package):
upload an image, the verdict appears. Skipped where Chromium is not installed."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _launch(p):
    return p.chromium.launch(
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


@contextlib.contextmanager
def _page(url: str):
    """A page of headless Chromium at ``url`` (closed afterwards)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            # waits end on a condition; the limit only catches a hang (slow, busy machines)
            page.set_default_timeout(180_000)
            page.goto(url)
            yield page
        finally:
            browser.close()


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_upload_shows_the_verdict(server, tmp_path):
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (30, 140, 90)).save(image)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    SCREENSHOTS.mkdir(exist_ok=True)
    with _page(server + "/") as page:
        page.click("details.key summary")
        page.fill("#apikey", "s3cret")
        page.dispatch_event("#apikey", "change")
        page.set_input_files("#files", [str(image), str(broken)])
        page.wait_for_selector(".card .verdict")
        page.wait_for_function("document.querySelectorAll('.card').length == 2")
        verdicts = page.locator(".card .verdict").all_inner_texts()
        assert any("Likely" in v and "%" in v for v in verdicts), verdicts
        assert any("Could not score (415 unsupported_format)" in v for v in verdicts), verdicts
        assert (
            "Provenance:" in page.locator(".card").first.inner_text()
            or "Provenance:" in page.locator(".card").last.inner_text()
        )
        page.screenshot(path=str(SCREENSHOTS / "web-page.png"), full_page=True)
    assert (SCREENSHOTS / "web-page.png").stat().st_size > 5000


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_where_map_is_drawn_over_the_image(server, tmp_path):
    """With "show where" ticked the page asks for tiles and draws each tile's p(fake) at its
    place over the picture; the boxes are the server's."""
    import httpx
    import numpy as np

    image = tmp_path / "wide.png"
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (150, 200, 3), np.uint8)).save(image)
    served = httpx.post(
        server + "/v1/detect?view=tiles",
        files={"files": ("wide.png", image.read_bytes())},
        headers={"X-API-Key": "s3cret"},
        timeout=300,
    ).json()["results"][0]
    expected = {
        "size": served["tiles"]["size"],
        "boxes": [r["box"] for r in served["regions"]],
        "fake_probs": [r["p"] for r in served["regions"]],
    }
    SCREENSHOTS.mkdir(exist_ok=True)
    with _page(server + "/") as page:
        page.click("details.key summary")
        page.fill("#apikey", "s3cret")
        page.dispatch_event("#apikey", "change")
        page.check("#where")
        page.set_input_files("#files", [str(image)])
        page.wait_for_selector(".card .where .tile")
        page.wait_for_function("[...document.querySelectorAll('.card img')].every(i => i.complete)")
        tiles = page.locator(".card .where .tile")
        assert tiles.count() == len(expected["boxes"]) == 16
        shown = [float(tiles.nth(k).get_attribute("data-p")) for k in range(tiles.count())]
        np.testing.assert_allclose(shown, expected["fake_probs"], atol=1e-4)
        picture = page.locator(".card .pic img").bounding_box()
        w, h = expected["size"]
        for k in (0, tiles.count() - 1):  # first and last tile sit where the boxes say
            box, (left, top, right, bottom) = tiles.nth(k).bounding_box(), expected["boxes"][k]
            assert abs(box["x"] - (picture["x"] + left / w * picture["width"])) < 1.5
            assert abs(box["y"] - (picture["y"] + top / h * picture["height"])) < 1.5
            assert abs(box["width"] - (right - left) / w * picture["width"]) < 1.5
            assert abs(box["height"] - (bottom - top) / h * picture["height"]) < 1.5
        legend = page.locator(".card .where-legend").inner_text()
        assert "16 tiles" in legend and "most suspicious" in legend
        page.screenshot(path=str(SCREENSHOTS / "web-page-where.png"), full_page=True)
        page.locator(".card .pic").click()  # the overlay hides on a click
        assert page.locator(".card .where.hidden").count() == 1
    assert (SCREENSHOTS / "web-page-where.png").stat().st_size > 5000


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_an_unknown_generator_gets_its_badge(attribution):
    """An adapted attribution model's server: an image of a generator it never saw shows the
    "Unknown generator" badge under its verdict (docs/adapt.md)."""
    import threading
    import time

    import httpx
    import uvicorn

    from miragedet.apps.server import ServerSettings, create_app

    chroma = sorted((attribution.parent / "unseen" / "chroma-2").iterdir())[0]
    from conftest import _free_port

    port = _free_port()
    app = create_app(ServerSettings(model=str(attribution), provenance=False))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(3000):  # a hang guard: readiness, not speed, ends the wait
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        SCREENSHOTS.mkdir(exist_ok=True)
        with _page(base + "/") as page:
            page.set_input_files("#files", [str(chroma)])
            page.wait_for_selector(".card .badge.unknown")
            badge = page.locator(".card .badge.unknown").inner_text()
            assert badge.startswith("Unknown generator")
            page.screenshot(path=str(SCREENSHOTS / "web-page-unknown.png"), full_page=True)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_a_clip_is_shown_with_its_timeline(server, tmp_path):
    """A video upload: the card shows the clip and its timeline, a dot per scored frame at the
    p(fake) the server gave (docs/video.md)."""
    import httpx
    import numpy as np

    from miragedet.data.synthetic_video import VideoSpec, make_frames, write_video

    frames = make_frames(np.random.default_rng(4), VideoSpec(size=96))
    clip = write_video(tmp_path / "clip.webm", frames)
    served = httpx.post(
        server + "/v1/detect",
        files={"files": ("clip.webm", clip.read_bytes())},
        headers={"X-API-Key": "s3cret"},
        timeout=300,
    ).json()["results"][0]
    assert served["video"]["frames_scored"] == 16
    with _page(server + "/") as page:
        page.click("details.key summary")
        page.fill("#apikey", "s3cret")
        page.dispatch_event("#apikey", "change")
        page.set_input_files("#files", [str(clip)])
        page.wait_for_selector(".card .timeline circle")
        dots = page.locator(".card .timeline circle")
        assert dots.count() == 16
        shown = [float(dots.nth(k).get_attribute("data-p")) for k in range(dots.count())]
        np.testing.assert_allclose(shown, [r["p"] for r in served["regions"]], atol=1e-4)
        assert page.locator(".card video").count() == 1
        assert "16 frames over 2.0 s" in page.locator(".card .timeline-box").inner_text()
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "web-page-video.png"), full_page=True)


def _try_it_out(page, content_type: str, upload: Path | None = None) -> tuple[int, dict]:
    """Swagger UI (/docs): POST /v1/detect's "Try it out" with ``content_type``, a file set in
    the multipart form or the JSON example as the document gives it; Execute; the live response's
    status and body as the page shows them."""
    import json

    op = page.locator("#operations-default-detect")
    if not op.locator(".opblock-body").count():
        op.locator(".opblock-summary").click()
    toggle = op.locator(".opblock-section-header button.try-out__btn").first
    toggle.wait_for()
    if toggle.inner_text().strip() == "Try it out":  # the server turns it on by default
        toggle.click()
    op.locator("button.execute").wait_for()
    op.locator(".opblock-section-request-body select").select_option(content_type)
    if upload is not None:
        field = op.locator("tr[data-property-name=files] input[type=file]").first
        field.set_input_files(str(upload))
    if op.locator(".live-responses-table").count():
        op.locator("button.btn-clear").click()
    op.locator("button.execute").click()
    status = op.locator(".live-responses-table .response .response-col_status").first
    status.wait_for()
    body = op.locator(".live-responses-table .response-col_description pre").first.inner_text()
    return int(status.inner_text().strip()), json.loads(body)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_swagger_ui_try_it_out_uploads_an_image(server, tmp_path):
    """The contract as a person meets it: the served /docs page (Swagger UI, offline), Authorize
    with the key, then "Try it out" on /v1/detect uploads a picture (200, scored), runs the JSON
    body's own example as it stands (200), and a non-image gets the documented error code."""
    image = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (30, 140, 90)).save(image)
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    with _page(server + "/docs") as page:
        page.wait_for_selector("#operations-default-detect")
        page.click("button.authorize")
        page.locator(".auth-container").first.locator("input").fill("s3cret")
        page.locator(".auth-container").first.locator("button.authorize").click()
        page.click("button.btn-done")
        # the JSON example first: Swagger UI keeps a form's value when the type is switched
        status, body = _try_it_out(page, "application/json")
        assert status == 200, body
        assert body["results"][0]["name"] == "pixel.png" and body["results"][0]["status"] == 200
        status, body = _try_it_out(page, "multipart/form-data", image)
        assert status == 200, body
        (result,) = body["results"]
        assert result["name"] == "photo.png" and result["label"] in ("real", "fake")
        assert 0.0 <= result["fake_prob"] <= 1.0
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "swagger-try-it-out.png"))
        status, body = _try_it_out(page, "multipart/form-data", text)
        assert status == 415, body
        assert body["code"] == "unsupported_format"
