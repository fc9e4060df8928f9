"""The web page in a real headless Chromium (Debian's package, driven by Playwright), against the real server.

Type the test caption, see its image in the top 5, open it with the keyboard, hover a word and see the
overlay change to that word's attention (the API's weights), Tab to the next word. Screenshots go to
$SCAN_TEST_ARTIFACTS (else the test's tmp folder). Skips, saying why, only when no Chromium is installed.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.models.test_search import QUERY, TARGET

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def chromium_executable() -> str | None:
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


@pytest.fixture
def page(tmp_path):
    executable = chromium_executable()
    if executable is None:
        pytest.skip("no Chromium installed (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser.new_page(viewport={"width": 1200, "height": 800})
        browser.close()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("SCAN_TEST_ARTIFACTS") or tmp_path) / "service_page"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def fill_opacities(page) -> list[float]:
    """Each box's fill opacity as rendered (computed style: a CSS rule would override the attribute)."""
    return [float(v) for v in page.eval_on_selector_all("#overlay rect",
                                                        "rs => rs.map(r => getComputedStyle(r).fillOpacity)")]


def test_search_open_and_hover_a_word_lights_its_regions(page, base_url, artifacts):
    page.goto(base_url + "/")
    page.fill("#query", QUERY)
    page.press("#query", "Enter")
    page.wait_for_selector("#results .hit")
    top5 = page.eval_on_selector_all("#results .hit", "hs => hs.slice(0, 5).map(h => h.dataset.image)")
    assert TARGET in top5
    page.screenshot(path=str(artifacts / "1_results.png"))

    page.focus(f"#results .hit[data-image='{TARGET}']")
    page.keyboard.press("Enter")
    page.wait_for_selector("#detail:not([hidden]) .word")
    attention = httpx.get(base_url + "/api/attention", params={"image": TARGET, "text": QUERY}).json()
    assert page.locator("#overlay rect").count() == len(attention["regions"])
    assert fill_opacities(page) == [0.0] * len(attention["regions"])

    red = next(i for i, word in enumerate(attention["words"]) if word["word"] == "red")
    page.hover(f".word[data-word='{red}']")
    lit = fill_opacities(page)
    weights = np.asarray(attention["word_to_region"][red])
    assert max(lit) > 0 and int(np.argmax(lit)) == int(np.argmax(weights))
    np.testing.assert_allclose(lit, 0.7 * weights / weights.max(), atol=2e-3)
    assert page.get_attribute("#overlay", "data-word") == str(red)
    page.screenshot(path=str(artifacts / "2_word_red.png"))

    page.focus(f".word[data-word='{red}']")
    page.keyboard.press("Tab")
    assert page.get_attribute("#overlay", "data-word") == str(red + 1)
    assert fill_opacities(page) != lit or np.allclose(attention["word_to_region"][red + 1], weights)
    page.screenshot(path=str(artifacts / "3_next_word_by_keyboard.png"))


def test_image_to_captions_toggle(page, base_url):
    page.goto(base_url + "/")
    page.check("input[name=direction][value=image]")
    assert page.inner_text("#query-label") == "Image id"
    page.fill("#query", TARGET)
    page.click("button[type=submit]")
    page.wait_for_selector("#results .caption-hit")
    assert QUERY in page.inner_text("#results .caption-hit >> nth=0")
    page.fill("#query", "no-such-image")
    page.press("#query", "Enter")
    page.locator("#message", has_text="unknown image id").wait_for()  # a selector: the page's CSP forbids eval
