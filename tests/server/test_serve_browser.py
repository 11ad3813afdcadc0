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
def playwright():
    sync_api = pytest.importorskip("playwright.sync_api", reason="browser tests need the playwright package")
    with sync_api.sync_playwright() as p:
        yield p


def open_page(playwright, url: str, args: list[str], init_script: str | None = None):
    """A new Chromium with ``args`` showing ``url`` (camera allowed); returns (browser, page); ``page.errors``
    collects the page's uncaught errors."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=args)
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    context.grant_permissions(["camera"], origin=url)
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    if init_script:
        page.add_init_script(init_script)
    page.goto(url + "/")
    page.errors = errors
    return browser, page


@pytest.fixture(scope="module")
def page(playwright, server):
    browser, page = open_page(playwright, server.url, ARGS)
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


def test_a_multilabel_answer_shows_its_label_set(playwright, multilabel_server, multilabel_classifier,
                                                multilabel_pngs, tmp_path: Path):  # fmt: skip
    """A multi-label run's answer reads as its set ("green + red"), in the model's order, not as one label."""
    from playwright.sync_api import expect

    data = multilabel_pngs[("green", "red")]
    path = tmp_path / "pair.png"
    path.write_bytes(data)
    shown = " + ".join(multilabel_classifier.predict(data)[0].labels)
    assert "+" in shown  # the tiny run sees both squares
    browser, page = open_page(playwright, multilabel_server.url, ARGS)
    try:
        page.set_input_files("#file-input", str(path))
        item = page.locator(f'#results li.result.ok[aria-label="pair.png: {shown}"]')
        expect(item).to_have_count(1)
        expect(item.locator(".label")).to_contain_text(shown)
        assert not page.errors
    finally:
        browser.close()


def write_y4m(path: Path, rgb, frames: int = 4) -> Path:
    """A Y4M video (what Chromium's fake camera plays, in a loop) of ``frames`` copies of the RGB image ``rgb``
    (even height and width), 4:2:0 with full-range BT.601 chroma."""
    import numpy as np

    img = np.asarray(rgb, np.float64)
    r, g, b = img[..., 0], img[..., 1], img[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    u = 128 - 0.168736 * r - 0.331264 * g + 0.5 * b
    v = 128 + 0.5 * r - 0.418688 * g - 0.081312 * b
    half = lambda c: c.reshape(c.shape[0] // 2, 2, c.shape[1] // 2, 2).mean((1, 3))  # noqa: E731
    planes = [np.clip(np.rint(c), 0, 255).astype(np.uint8).tobytes() for c in (y, half(u), half(v))]
    height, width = y.shape
    with open(path, "wb") as fh:
        fh.write(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            fh.write(b"FRAME\n" + b"".join(planes))
    return path


# In the page, before app.js: every camera frame's upload (base64) and the answer to it, in window.cameraFrames.
RECORD_FRAMES = """
window.cameraFrames = [];
const realFetch = window.fetch.bind(window);
window.fetch = async (url, options) => {
  const response = await realFetch(url, options);
  if (String(url).includes("session=") && options && options.body instanceof Blob) {
    const bytes = new Uint8Array(await options.body.arrayBuffer());
    let binary = "";
    for (const b of bytes) binary += String.fromCharCode(b);
    const answer = await response.clone().json();
    window.cameraFrames.push({ url: String(url), status: response.status, jpeg: btoa(binary), answer });
  }
  return response;
};
"""


@pytest.fixture(scope="module")
def camera_page(playwright, server, tmp_path_factory):
    """A page in a browser whose fake camera films a picture of the 'red' class (a training-like image, 8x
    upscaled)."""
    import numpy as np

    from imagefixtures import COLOURS, make_image

    picture = make_image(COLOURS["red"], np.random.default_rng(7)).repeat(8, 0).repeat(8, 1)
    video = write_y4m(tmp_path_factory.mktemp("camera") / "red.y4m", picture)
    args = [*ARGS, f"--use-file-for-fake-video-capture={video}"]
    browser, page = open_page(playwright, server.url, args, RECORD_FRAMES)
    yield page
    browser.close()


def test_camera_mode_labels_the_filmed_picture_frame_after_frame(camera_page, classifier, tmp_path: Path):
    """Every camera frame the page sends is answered with what the model says for that very frame (the JPEG
    it uploaded, classified here), the filmed picture is 'red', and the page shows it while frames keep going."""
    import base64

    from playwright.sync_api import expect

    page = camera_page
    page.click("#camera-toggle")
    expect(page.locator("#camera-toggle")).to_have_attribute("aria-pressed", "true")
    page.wait_for_function("() => window.cameraFrames.length >= 3", timeout=60_000)
    frames = page.evaluate("() => window.cameraFrames.slice(0, 3)")
    for frame in frames:
        assert frame["status"] == 200, frame["answer"]
        jpeg = base64.b64decode(frame["jpeg"])
        assert jpeg[:3] == b"\xff\xd8\xff"  # the canvas snapshot, as a JPEG
        assert frame["answer"]["predictions"][0]["label"] == classifier.predict(jpeg)[0].label == "red"
    assert len({re.search(r"session=(\w+)", f["url"]).group(1) for f in frames}) == 1  # one session, 3 frames
    status = page.locator("#camera-result")
    expect(status).to_have_attribute("data-label", "red")
    expect(status).to_have_text(re.compile(r"^red \d+%$"))
    page.screenshot(
        path=str(Path(os.environ.get("IMAGEREC_SCREENSHOTS", tmp_path)) / "camera.png"), full_page=True
    )
    page.click("#camera-toggle")  # a frame in flight may still answer after this: no assertion on the text
    expect(page.locator("#camera-toggle")).to_have_attribute("aria-pressed", "false")
    assert not page.errors


def test_a_camera_answer_arriving_after_stop_is_ignored(camera_page):
    """Stop while a frame's answer is on its way: the late answer (held here, then delivered) must not overwrite
    'Camera off' (issue 19: it used to, and the camera test failed on a fresh clone)."""
    import json

    from playwright.sync_api import Error, expect

    page = camera_page
    held = []
    frames = re.compile(r".*/v1/predict\?.*session=.*")

    def hold(route) -> None:
        held.append(route)

    page.route(frames, hold)
    try:
        page.click("#camera-toggle")
        expect(page.locator("#camera-toggle")).to_have_attribute("aria-pressed", "true")
        page.wait_for_function("() => window.cameraFrames !== undefined")
        deadline = 60_000
        while not held and deadline > 0:  # the first frame's request, held by the route
            page.wait_for_timeout(50)
            deadline -= 50
        assert held, "the camera sent no frame"
        page.click("#camera-toggle")
        status = page.locator("#camera-result")
        expect(status).to_have_text("Camera off")
        late = {
            "predictions": [
                {"label": "blue", "confidence": 0.99, "top_k": [{"label": "blue", "score": 0.99}]}
            ]
        }
        try:
            held[0].fulfill(status=200, content_type="application/json", body=json.dumps(late))
        except Error:
            pass  # Stop aborted the request: there is nothing left to answer
        expect(status).to_have_attribute("data-late-answers", re.compile(r"^[1-9]"))
        expect(status).to_have_text("Camera off")
        assert status.get_attribute("data-label") is None
    finally:
        page.unroute(frames, hold)
    assert not page.errors
