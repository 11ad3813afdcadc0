"""The Review tab in a real browser (Debian chromium via Playwright), behind an API key: keys label pictures into
the dataset, ``n`` marks none of these, ``u`` undoes, ``s`` skips, the progress counts."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from imagerec.settings import ReviewSettings, ServeSettings

from .conftest import LiveServer
from .test_serve_browser import ARGS, open_page, playwright, pytestmark  # noqa: F401 - the shared fixture/marks
from .test_serve_review import KEY, record_pictures


def wait_for(check, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def review_page(playwright, classifier, tmp_path_factory):  # noqa: F811 - the playwright fixture
    from imagerec.monitoring.review import build_queue
    from imagerec.server.app import create_app

    root = tmp_path_factory.mktemp("review-browser")
    record_pictures(classifier, root / "rec", count=6)
    # near_duplicate=0: the tiny run's colour pictures lie too close together for the default to keep six
    build_queue(
        root / "rec", root / "queue", ReviewSettings(size=6, near_duplicate=0.0), list(classifier.labels)
    )
    settings = ServeSettings(api_key=KEY, review=str(root / "queue"), review_out=str(root / "dataset"))
    with LiveServer(create_app(classifier, settings)) as live:
        browser, page = open_page(playwright, live.url, ARGS)
        yield page, root / "dataset", live
        browser.close()


def files(dataset: Path) -> list[str]:
    return sorted(str(p.relative_to(dataset)) for p in dataset.rglob("*.png"))


def test_review_tab_labels_with_the_keyboard_behind_the_key(review_page, classifier):
    from playwright.sync_api import expect

    page, dataset, _ = review_page
    expect(page.locator("#key-section")).to_be_visible()
    expect(page.locator("#tabs")).to_be_hidden()  # no key yet: the queue is not readable
    page.fill("#api-key", KEY)
    page.click("#key-save")
    expect(page.locator("#tabs")).to_be_visible()
    page.click("#tab-review")
    expect(page.locator("#review-pane")).to_be_visible()
    expect(page.locator("#review-progress")).to_have_text("0 / 6")
    expect(page.locator("#review-classes button")).to_have_count(len(classifier.labels))
    expect(page.locator("#review-guess")).to_contain_text("Model's guess:")
    first = page.locator("#review-image")
    expect(first).to_have_attribute("src", re.compile("^blob:"))
    first_id = first.get_attribute("data-id")

    page.locator("body").press("1")  # the first class
    wait_for(lambda: files(dataset) == [f"{classifier.labels[0]}/{first_id}.png"], "the first label on disk")
    expect(page.locator("#review-progress")).to_have_text("1 / 6")
    expect(page.locator("#review-image")).not_to_have_attribute("data-id", first_id)
    second_id = page.locator("#review-image").get_attribute("data-id")

    page.keyboard.press("n")  # none of these: a dot folder, never a class
    wait_for(lambda: f".none/{second_id}.png" in files(dataset), "the none-of-these picture")
    page.keyboard.press("u")  # undo the last one: back on the second picture, its file gone
    wait_for(lambda: f".none/{second_id}.png" not in files(dataset), "the undo")
    expect(page.locator("#review-image")).to_have_attribute("data-id", second_id)
    expect(page.locator("#review-progress")).to_have_text("1 / 6")

    page.keyboard.press("s")  # skip: seen, nothing written
    expect(page.locator("#review-progress")).to_have_text("2 / 6")
    page.locator("#review-classes button").nth(1).click()  # a click works like a key
    expect(page.locator("#review-progress")).to_have_text("3 / 6")
    wait_for(lambda: len(files(dataset)) == 2, "the clicked label")
    assert {f.split("/")[0] for f in files(dataset)} == {classifier.labels[0], classifier.labels[1]}
    assert page.errors == []
