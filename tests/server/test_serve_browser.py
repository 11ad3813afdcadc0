"""The web page in a real browser (Debian chromium driven by Playwright): upload, errors, live camera."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason=f"browser tests need Debian chromium at {CHROMIUM}"
    ),
]


@pytest.fixture(scope="module")
def page(server):
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        context.grant_permissions(["camera"], origin=server.url)
        page = context.new_page()
        page.set_default_timeout(30_000)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(server.url + "/")
        page.errors = errors
        yield page
        browser.close()


def test_upload_shows_top_k_bars(page, colour_pngs, tmp_path: Path):
    from playwright.sync_api import expect

    expect(page.locator("#model-info")).to_contain_text("3 classes")
    files = []
    for name in ("red", "blue"):
        path = tmp_path / f"{name}.png"
        path.write_bytes(colour_pngs[name])
        files.append(str(path))
    page.set_input_files("#file-input", files)
    results = page.locator("#results li.result.ok")
    expect(results).to_have_count(2)
    for name in ("red", "blue"):
        item = page.locator(f'#results li[aria-label="{name}.png: {name}"]')
        expect(item).to_have_count(1)
        bars = item.locator("ol.bars li.bar")
        expect(bars).to_have_count(3)
        assert bars.first.get_attribute("aria-label").startswith(f"{name}: ")
    page.screenshot(
        path=str(Path(os.environ.get("IMAGEREC_SCREENSHOTS", tmp_path)) / "upload.png"), full_page=True
    )
    assert not page.errors


def test_drag_and_drop_shows_top_k_bars(page, colour_pngs):
    """Files dropped on the drop zone (a DataTransfer built in the page, as a user's drag would carry)."""
    import base64

    from playwright.sync_api import expect

    files = [(f"dropped-{n}.png", base64.b64encode(colour_pngs[n]).decode()) for n in ("green", "red")]
    transfer = page.evaluate_handle(
        """(files) => {
            const transfer = new DataTransfer();
            for (const [name, b64] of files) {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                transfer.items.add(new File([bytes], name, { type: "image/png" }));
            }
            return transfer;
        }""",
        files,
    )
    page.dispatch_event("#drop-zone", "dragenter", {"dataTransfer": transfer})
    page.dispatch_event("#drop-zone", "dragover", {"dataTransfer": transfer})
    expect(page.locator("#drop-zone")).to_have_class(re.compile(r"\bover\b"))  # highlighted as a target
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    expect(page.locator("#drop-zone")).not_to_have_class(re.compile(r"\bover\b"))
    for name in ("green", "red"):
        item = page.locator(f'#results li.result.ok[aria-label="dropped-{name}.png: {name}"]')
        expect(item).to_have_count(1)
        expect(item.locator("img")).to_have_attribute("alt", f"Preview of dropped-{name}.png")
        bars = item.locator("ol.bars li.bar")
        expect(bars).to_have_count(3)
        assert bars.first.get_attribute("aria-label").startswith(f"{name}: ")
    assert not page.errors


def test_non_image_shows_an_error(page, tmp_path: Path):
    from playwright.sync_api import expect

    path = tmp_path / "notes.png"
    path.write_text("this is text, not a picture")
    page.set_input_files("#file-input", str(path))
    alert = page.locator('#results li.result.error [role="alert"]')
    expect(alert).to_contain_text("unsupported_format")
    assert not page.errors


def test_camera_mode_shows_a_running_label(page, classifier, tmp_path: Path):
    from playwright.sync_api import expect

    page.click("#camera-toggle")
    expect(page.locator("#camera-toggle")).to_have_attribute("aria-pressed", "true")
    status = page.locator("#camera-result")
    expect(status).to_have_attribute("data-label", re.compile(r".+"), timeout=30_000)
    label = status.get_attribute("data-label")
    assert label in classifier.labels
    assert "%" in status.inner_text()
    # it keeps running: several frames get classified
    first = status.inner_text()
    page.wait_for_timeout(1500)
    page.screenshot(
        path=str(Path(os.environ.get("IMAGEREC_SCREENSHOTS", tmp_path)) / "camera.png"), full_page=True
    )
    page.click("#camera-toggle")
    expect(status).to_have_text("Camera off")
    assert first and not page.errors
