"""Two readers in real Chromium: the queue worked with the keyboard, keys inert before the film is drawn and when
switched off, an undo, a second reader's conflicting decision (409, then a third read), axe-core on the queue,
worklist and study pages, screenshots at 1280x720 into docs/screenshots/.

Runs `pneumoscreen up` on the embedded default (tests/browser/test_workstation.py's fixture); axe-core comes from
npm (tests/browser/axe.py installs it into test-output/ when it is not there yet).
"""
import re
import subprocess
import sys

import numpy as np
import pytest
import requests

from tests.browser.axe import axe_violations
from tests.browser.test_workstation import CHROMIUM, CHROMIUM_ARGS, portal  # noqa: F401 (a fixture)
from tests.dicom.factory import chest_pixels, dataset, to_bytes
from tests.helpers import REPO, bearer, chest_films, wait_until, zip_bytes

SCREENSHOTS = REPO / "docs" / "screenshots"
PASSWORD = "violet ledger tramway"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(),
                                 reason="no /usr/bin/chromium: `apt-get install -y chromium` (see .ci/run)")]


def _films() -> dict[str, bytes]:
    """Laterals (flagged out of scope whatever the tiny model says), a windowed 12-bit frontal CR, and JPEGs."""
    films = chest_films(normal=2, pneumonia=1)
    for i in range(3):
        pixels = chest_pixels(400 + 16 * i, 360, bits=12)
        films[f"lateral-{i}.dcm"] = to_bytes(dataset(pixels, view="LL", AccessionNumber=f"ACC{i}", PatientSex="F",
                                                     StudyDate="20261128"))
    noise = np.random.default_rng(0).integers(0, 40, (1200, 1000)).astype(np.uint16)
    frontal = chest_pixels(1200, 1000, bits=12) + noise
    films["frontal.dcm"] = to_bytes(dataset(frontal, WindowCenter=2000, WindowWidth=2500, AccessionNumber="ACC9"))
    return films


def _create_reader(env: dict, cwd, name: str) -> None:
    subprocess.run([sys.executable, "-m", "pneumoscreen", "users", "create", name, "--role", "reviewer",
                    "--password-stdin"], input=PASSWORD + "\n", text=True, cwd=cwd, env=env, check=True,
                   capture_output=True, timeout=120)


def _login(browser, base: str, name: str, password: str):
    context = browser.new_context(viewport={"width": 1280, "height": 720}, bypass_csp=True)  # axe is injected
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(f"{base}/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("form button[type=submit]")
    page.wait_for_url(lambda url: "/login" not in url)
    return page


def _no_serious(page, what: str) -> None:
    violations = [v for v in axe_violations(page) if v["impact"] in ("critical", "serious")]
    assert not violations, f"{what}: " + "; ".join(
        f"{v['id']} ({v['impact']}): {v['help']} at {[(n['target'], n['failureSummary']) for n in v['nodes'][:3]]}"
        for v in violations)


def test_two_readers_work_the_queue_by_keyboard(portal, tmp_path, monkeypatch):  # noqa: F811
    from playwright.sync_api import expect, sync_playwright

    base, _ = portal
    env = {"PATH": "/usr/bin:/bin", "PNEUMOSCREEN_DATA_DIR": str(tmp_path / "var")}
    for name in ("ana", "ben"):
        _create_reader(env, tmp_path, name)
    # The admin uploads through the portal's API with a session-less token made here.
    token = subprocess.run([sys.executable, "-m", "pneumoscreen", "users", "create", "robot", "--role", "uploader"],
                           cwd=tmp_path, env=env, check=True, capture_output=True, text=True,
                           timeout=120).stdout.strip().splitlines()[-1]
    films = _films()
    batch = requests.post(f"{base}/api/v1/batches", headers=bearer(token), timeout=60,
                          files=[("files", ("films.zip", zip_bytes(films)))]).json()
    wait_until(lambda: requests.get(f"{base}/api/v1/batches/{batch['id']}", headers=bearer(token),
                                    timeout=10).json()["status"] == "done", "screening", 180, 1)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        ana, ben = _login(browser, base, "ana", PASSWORD), _login(browser, base, "ben", PASSWORD)

        # The queue: lanes with counts, the navigation count, keyboard selection.
        ana.goto(f"{base}/review/?lane=scope")
        rows = ana.locator("#queue-body tr")
        assert rows.count() >= 3
        expect(ana.locator("header nav .count")).not_to_have_text("0")
        ana.screenshot(path=str(SCREENSHOTS / "review-queue.png"))
        _no_serious(ana, "queue")
        ana.keyboard.press("j")
        expect(rows.first).to_have_class("selected")
        ana.keyboard.press("Enter")
        ana.wait_for_url(re.compile(r"/review/\d+\?lane=scope$"))
        first_case = ana.url

        # The study page: the film at its bit depth, presets, zoom.
        workstation = ana.locator("#workstation")
        expect(workstation).to_have_attribute("data-ready", "1")
        ana.click("[data-preset=full]")
        expect(workstation).to_have_attribute("data-window-preset", "full")
        ana.mouse.move(400, 400)
        ana.mouse.wheel(0, -400)
        _no_serious(ana, "study page")

        # A held key does nothing; a decision key starts an undo window; Z undoes it.
        ana.evaluate("document.dispatchEvent(new KeyboardEvent('keydown', {key: 'n', repeat: true, bubbles: true}))")
        expect(ana.locator("#pending")).to_be_hidden()
        ana.keyboard.press("n")
        expect(ana.locator("#pending")).to_be_visible()
        expect(ana.locator("#pending-text")).to_contain_text("Recording normal")
        ana.keyboard.press("z")
        expect(ana.locator("#pending")).to_be_hidden()
        ana.wait_for_timeout(5500)  # past the undo window: nothing was sent
        assert ana.url == first_case

        # Shortcuts switched off: keys are inert; switched on again (kept in localStorage).
        ana.click("#shortcut-settings summary")
        ana.uncheck("#keys-on")
        ana.locator("body").press("n")
        expect(ana.locator("#pending")).to_be_hidden()
        ana.check("#keys-on")

        # Keys act only once the film is drawn: a film that never arrives leaves them inert.
        ana.route("**/film", lambda route: None)
        ana.reload()
        ana.wait_for_timeout(500)
        ana.keyboard.press("n")
        expect(ana.locator("#pending")).to_be_hidden()
        ana.unroute("**/film")
        ana.reload()
        expect(workstation).to_have_attribute("data-ready", "1")

        # Decide by key: after the undo window the next case opens (her claim released, ben's skipped).
        ana.keyboard.press("n")
        ana.wait_for_url(lambda url: url != first_case, timeout=20_000)
        expect(ana.locator(".flashes")).to_contain_text("decision recorded")
        second_case = ana.url
        expect(ana.locator("#workstation")).to_have_attribute("data-ready", "1")

        # Ben opens the case Ana holds: warned, decides pneumonia first.
        ben.goto(second_case)
        expect(ben.locator(".banner.held")).to_contain_text("ana")
        expect(ben.locator("#workstation")).to_have_attribute("data-ready", "1")
        ben.keyboard.press("p")
        ben.wait_for_url(lambda url: url != second_case, timeout=20_000)

        # Ana, whose page predates Ben's read, decides normal: refused, Ben's read shown.
        ana.keyboard.press("n")
        conflict = ana.locator(".banner.conflict:not([hidden])")
        expect(conflict).to_contain_text("ben", timeout=20_000)
        expect(conflict).to_contain_text("pneumonia")
        ana.screenshot(path=str(SCREENSHOTS / "review-conflict.png"))
        # Deciding again, deliberately: the disagreement goes to a third reader.
        expect(ana.locator("#workstation")).to_have_attribute("data-ready", "1")
        ana.keyboard.press("n")
        expect(ana.locator(".flashes")).to_contain_text("decision recorded", timeout=20_000)
        ana.goto(f"{base}/review/?lane=third")
        expect(ana.locator("#queue-body tr")).to_have_count(1)

        # Every study readable: the worklist.
        ana.goto(f"{base}/review/all")
        assert ana.locator("#worklist tbody tr").count() == len(films)
        ana.screenshot(path=str(SCREENSHOTS / "review-worklist.png"))
        _no_serious(ana, "worklist")
        ana.goto(f"{base}/review/?status=closed")
        expect(ana.locator("#queue-body")).to_contain_text("ana")

        # The 12-bit frontal film, its DICOM window, the heatmap overlaid (the README's picture).
        ana.goto(f"{base}/review/all")
        ana.click("tr:has-text('frontal.dcm') a >> nth=0")
        expect(workstation).to_have_attribute("data-ready", "1")
        expect(workstation).to_have_attribute("data-window", "2500/2000")  # from the DICOM header
        if ana.locator("#heat-mode").count():
            ana.select_option("#heat-mode", "overlay")
        ana.wait_for_timeout(300)
        ana.screenshot(path=str(SCREENSHOTS / "review-study.png"))
        browser.close()
