"""A reviewer in a real browser: log in, upload a zip, watch progress reach 100%, decide with a key.

Runs `pneumoscreen up` on the embedded default and Debian's Chromium through Playwright.
Screenshots go to test-output/ (gitignored).
"""
from pathlib import Path

import pytest

from tests.browser.portal import running_portal
from tests.dicom.factory import chest_pixels, dataset, to_bytes
from tests.helpers import REPO, chest_films, zip_bytes

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SHOTS = REPO / "test-output"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(),
                                 reason="no /usr/bin/chromium: `apt-get install -y chromium` (see .ci/run)")]


@pytest.fixture
def portal(tmp_path, tiny_weights):
    """`pneumoscreen up` for one test: (base url, admin password)."""
    with running_portal(tmp_path, tiny_weights) as running:
        yield running


def test_reviewer_uploads_watches_progress_and_decides_by_key(portal, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    base, password = portal
    films = chest_films(normal=3, pneumonia=3)
    films["chest-cr.dcm"] = to_bytes(dataset(chest_pixels(512, 440)))
    films["lateral-only.dcm"] = to_bytes(dataset(chest_pixels(), view="LL"))  # out_of_scope: flagged for sure
    upload = tmp_path / "films.zip"
    upload.write_bytes(zip_bytes(films))
    SHOTS.mkdir(exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(30_000)
        page.goto(f"{base}/login")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", password)
        page.click("button[type=submit], input[type=submit]")
        page.goto(f"{base}/upload")
        page.set_input_files("input[name=files]", str(upload))
        page.click("form button[type=submit], form input[type=submit] >> nth=-1")

        expect(page.locator(".summary .pct")).to_have_text("100%", timeout=120_000)
        expect(page.locator(".summary .done")).to_have_text(str(len(films)))
        page.screenshot(path=str(SHOTS / "browser-1-batch-done.png"), full_page=True)

        # The frontal CR film when the tiny model flagged it; the lateral-only film is flagged out_of_scope for sure.
        frontal = page.locator("tr[data-flagged='1']", has_text="chest-cr.dcm").locator("td.file a")
        flagged = frontal if frontal.count() else page.locator("tr", has_text="lateral-only.dcm").locator("td.file a")
        study_url = flagged.get_attribute("href")
        flagged.click()
        expect(page.locator("#workstation")).to_have_attribute("data-ready", "1")
        page.click("[data-preset=full]")  # window/level on the film's own values (tests/browser/test_reader.py)
        expect(page.locator("#workstation")).to_have_attribute("data-window-preset", "full")
        page.screenshot(path=str(SHOTS / "browser-2-study.png"), full_page=True)

        page.keyboard.press("n")  # sent after the 5 s undo window
        expect(page.locator(".flashes")).to_contain_text("decision recorded", timeout=20_000)
        page.screenshot(path=str(SHOTS / "browser-3-decided.png"), full_page=True)
        page.goto(base + study_url)
        expect(page.locator("ul.reviews")).to_contain_text("admin: normal")
        browser.close()
