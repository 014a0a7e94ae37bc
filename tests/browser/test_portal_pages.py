"""Uploaders and admins in a real browser (Debian's Chromium through Playwright, `pneumoscreen up` on the embedded
default): an admin creates a department and a user; that uploader sends a folder's worth of films with bad files
among them and still sees every refused file, grouped and in natural order, after the page reloads; axe-core
finds no critical or serious violation on the upload, batch, batches and admin pages. Screenshots at 1280×720 go
to docs/screenshots/ (committed, shown in the README).

axe-core comes from npm at test time into tests/browser/node_modules (ignored by git): `npm` must be on PATH
(Debian: `apt-get install -y npm`); without it the axe test is skipped with that reason.
"""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.browser.portal import running_portal
from tests.helpers import REPO, chest_films, zip_bytes

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = REPO / "docs" / "screenshots"
AXE_VERSION = "4.14.1"
AXE = REPO / "tests" / "browser" / "node_modules" / "axe-core" / "axe.min.js"
VIEWPORT = {"width": 1280, "height": 720}
PASSWORD = "copper lantern meadow"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(),
                                 reason="no /usr/bin/chromium: `apt-get install -y chromium` (see .ci/run)")]


@pytest.fixture(scope="module")
def portal(tmp_path_factory, tiny_weights):
    """`pneumoscreen up` for the module's tests: (base url, admin password)."""
    with running_portal(tmp_path_factory.mktemp("portal"), tiny_weights) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def axe_source() -> str:
    """axe-core's browser bundle, installed from npm on first use."""
    if not AXE.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("no npm to install axe-core: `apt-get install -y npm` (see .ci/run)")
        done = subprocess.run([npm, "install", "--no-save", "--no-package-lock", "--no-audit", "--no-fund",
                               "--prefix", str(AXE.parents[2]), f"axe-core@{AXE_VERSION}"],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and AXE.exists(), f"npm install axe-core failed: {done.stderr[-2000:]}"
    return AXE.read_text()


def _log_in(page, base: str, username: str, password: str) -> None:
    page.goto(f"{base}/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    page.click("main button[type=submit]")
    page.wait_for_url(lambda url: "/login" not in url)


def _shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_load_state()  # a page still navigating cannot be captured ("Unable to capture screenshot")
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"))


def _serious_violations(page, axe_source: str) -> list[str]:
    page.add_script_tag(content=axe_source)
    result = page.evaluate("() => axe.run(document, {resultTypes: ['violations']})")
    return [f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:3]}"
            for v in result["violations"] if v["impact"] in ("critical", "serious")]


@pytest.fixture(scope="module")
def uploader(portal, browser):
    """An admin creates the department "Radiology North" and the uploader "nadia" in it, through the pages."""
    from playwright.sync_api import expect

    base, password = portal
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(30_000)
    _log_in(page, base, "admin", password)
    page.goto(f"{base}/admin/departments")
    page.fill("input[name=name] >> nth=-1", "Radiology North")
    page.click("text=Add department")
    expect(page.locator(".flashes")).to_contain_text("Department Radiology North created")
    page.fill("input[name=name] >> nth=-1", "radiology north")
    page.click("text=Add department")
    expect(page.locator(".flashes")).to_contain_text("already exists")
    _shot(page, "admin-departments")

    page.goto(f"{base}/admin/users")
    page.fill("#username", "nadia")
    page.select_option("#role", "uploader")
    page.select_option("#department", label="Radiology North")
    page.fill("#password", PASSWORD)
    page.click("text=Add user")
    expect(page.locator(".flashes")).to_contain_text("User nadia created")
    expect(page.locator("tr", has_text="nadia")).to_contain_text("Radiology North")
    page.locator("tr", has_text="nadia").locator("summary").click()
    _shot(page, "admin-users")
    page.close()
    return "nadia"


def test_admin_creates_a_department_and_a_user(portal, browser, uploader):
    page = browser.new_page(viewport=VIEWPORT)
    _log_in(page, portal[0], uploader, PASSWORD)
    assert page.url.endswith("/batches") and "nadia (uploader)" in page.inner_text("header")
    page.close()


def test_uploader_sees_rejected_files_after_the_page_reloads(portal, browser, uploader, tmp_path):
    from playwright.sync_api import expect

    base = portal[0]
    films = chest_films(normal=2, pneumonia=2)
    junk = {f"scan{i}.png": b"not a film" for i in (100, 10, 2, 1)} | {"notes.txt": b"hello", "empty.dcm": b""}
    upload = tmp_path / "films.zip"
    upload.write_bytes(zip_bytes(films | junk))
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(30_000)
    _log_in(page, base, uploader, PASSWORD)
    page.goto(f"{base}/upload")
    page.set_input_files("#files", str(upload))
    expect(page.locator("#chosen")).to_contain_text("1 file chosen")
    _shot(page, "upload")
    page.click("main button[type=submit]")
    page.wait_for_url(re.compile(r"/batches/\d+"))
    expect(page.locator("#headline")).to_have_text("4 queued, 6 rejected")
    expect(page.locator(".summary .pct")).to_have_text("100%", timeout=180_000)

    page.reload()  # nothing lives only in a flash message: the refused files are on the batch
    expect(page.locator("#headline")).to_have_text("4 queued, 6 rejected")
    expect(page.locator("#rejections h2")).to_have_text("6 files rejected")
    expect(page.locator("#rejections summary").first).to_contain_text("5 ×")
    names = page.locator("#rejections details").first.locator("li").all_inner_texts()
    assert names == [f"films.zip/{n}" for n in ("notes.txt", "scan1.png", "scan2.png", "scan10.png", "scan100.png")]
    expect(page.locator("dd.rejected")).to_have_text("6")
    expect(page.locator("dd.done")).to_have_text("4")
    # Local time with its zone, shown by the page script (the server writes UTC).
    assert "UTC" not in page.locator("h1 time").inner_text() or page.evaluate(
        "Intl.DateTimeFormat().resolvedOptions().timeZone") in ("UTC", "Etc/UTC")
    # Filters apply in place and survive the next poll.
    page.select_option("select[name=show]", "error")
    expect(page.locator("#shown")).to_have_text("0 of 4 films shown")
    page.select_option("select[name=show]", "")
    _shot(page, "batch")
    page.goto(f"{base}/batches")
    expect(page.locator("tr[data-batch]").first).to_contain_text("4 queued, 6 rejected")
    _shot(page, "batches")
    page.goto(f"{base}/batches/999999")
    expect(page.locator("main h1")).to_contain_text("Nothing here")
    _shot(page, "error-404")
    page.close()


def test_a_lost_session_keeps_what_was_typed(portal, browser, uploader):
    """The session ends while a form is filled in: login, then back on the same page with the fields restored."""
    from playwright.sync_api import expect

    base, password = portal
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(30_000)
    _log_in(page, base, "admin", password)
    page.goto(f"{base}/admin/users")
    page.fill("#username", "kept-name")
    page.select_option("#role", "reviewer")
    page.fill("#password", "not kept: a password")
    context.clear_cookies()  # the session ended (idle timeout, a restart with a new secret)
    page.click("text=Add user")
    expect(page.locator(".flashes")).to_contain_text("Your session ended")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", password)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{base}/admin/users")  # ?restore=1 is taken off once the form is restored
    expect(page.locator("#username")).to_have_value("kept-name")
    expect(page.locator("#role")).to_have_value("reviewer")
    expect(page.locator("#password")).to_have_value("")
    page.reload()  # restored once only
    expect(page.locator("#username")).to_have_value("")
    context.close()


def test_idle_logoff_warns_a_minute_before_and_comes_back_after_login(portal, browser, uploader):
    """With the page's clock run forward (PNEUMOSCREEN_SESSION_IDLE_MINUTES is 30 here)."""
    from playwright.sync_api import expect

    base = portal[0]
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(30_000)
    page.clock.install()
    _log_in(page, base, uploader, PASSWORD)
    page.goto(f"{base}/batches?x=1")
    expect(page.locator("#idle-warning")).to_be_hidden()
    page.clock.fast_forward("29:10")
    expect(page.locator("#idle-warning")).to_be_visible()
    page.click("#idle-stay")  # activity: the count starts again
    expect(page.locator("#idle-warning")).to_be_hidden()
    page.clock.fast_forward("29:10")
    expect(page.locator("#idle-warning")).to_be_visible()
    page.clock.fast_forward("01:00")
    page.wait_for_url(re.compile(r"/login\?next="))
    expect(page.locator(".flashes")).to_contain_text("without activity")
    page.fill("input[name=username]", uploader)
    page.fill("input[name=password]", PASSWORD)
    page.click("main button[type=submit]")
    page.wait_for_url(f"{base}/batches?x=1")
    page.close()


def test_batch_page_polling_shows_a_stopped_worker_and_a_lost_session(portal, browser, uploader):
    """The page's own script against answers the test shapes (page.route): a batch still running while /healthz
    says no worker is alive, then a 401 (the session ended)."""
    from playwright.sync_api import expect

    base = portal[0]
    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(30_000)
    page.clock.install()
    _log_in(page, base, uploader, PASSWORD)
    batch_id = page.evaluate("() => fetch('/api/v1/batches').then(r => r.json())")["items"][0]["id"]
    real = page.evaluate(f"() => fetch('/api/v1/batches/{batch_id}').then(r => r.json())")
    stuck = real | {"status": "running", "percent": 50, "queued": 2, "done": 2}
    page.route(f"**/api/v1/batches/{batch_id}", lambda route: route.fulfill(json=stuck))
    page.route("**/healthz", lambda route: route.fulfill(json={"status": "degraded", "workers_alive": 0,
                                                                "studies_waiting": 2}))
    page.goto(f"{base}/batches/{batch_id}")
    page.clock.fast_forward("00:31")
    expect(page.locator("#worker-banner")).to_contain_text("No screening worker is running: 2 studies")
    expect(page.locator("dd.queued")).to_have_text("2")  # counts updated in place
    page.unroute(f"**/api/v1/batches/{batch_id}")
    page.route(f"**/api/v1/batches/{batch_id}", lambda route: route.fulfill(status=401, json={"error": "login"}))
    page.clock.fast_forward("00:03")
    page.wait_for_url(re.compile(r"/login\?next=%2Fbatches%2F"))
    page.close()


def test_upload_checks_the_size_before_sending(portal, browser, uploader, tmp_path):
    from playwright.sync_api import expect

    page = browser.new_page(viewport=VIEWPORT)
    page.set_default_timeout(30_000)
    _log_in(page, portal[0], uploader, PASSWORD)
    page.goto(f"{portal[0]}/upload")
    big = tmp_path / "big.dcm"
    big.write_bytes(bytes(2 * 1024 * 1024))
    page.eval_on_selector("#upload", "form => form.setAttribute('data-max-mb', '1')")  # a 1 MB limit, here only
    page.set_input_files("#files", str(big))
    requests = []
    page.on("request", lambda request: requests.append(request) if request.method == "POST" else None)
    page.click("main button[type=submit]")
    expect(page.locator("#upload-error")).to_contain_text("over the 1.0 MB limit for one upload")
    assert not requests and page.url.endswith("/upload")
    page.close()


def test_no_serious_accessibility_violations(portal, browser, uploader, axe_source):
    from playwright.sync_api import expect

    base, password = portal
    context = browser.new_context(viewport=VIEWPORT, bypass_csp=True)  # lets the test add axe-core to the page
    page = context.new_page()
    page.set_default_timeout(30_000)
    _log_in(page, base, "admin", password)
    batch = page.evaluate("() => fetch('/api/v1/batches').then(r => r.json())")["items"]
    paths = ["/upload", "/batches", "/admin/users", "/admin/departments", "/admin/tokens", "/admin/audit",
             "/admin/audit?tab=security", "/admin/calibration", "/qa", "/review/", "/review/?status=closed",
             "/review/all", "/batches/999999"] + ([f"/batches/{batch[0]['id']}"] if batch else [])
    found = {}
    for path in paths:
        page.goto(base + path)
        if problems := _serious_violations(page, axe_source):
            found[path] = problems
    page.goto(f"{base}/admin/tokens")
    page.fill("input[name=name]", "pacs-bridge")
    page.click("text=Issue token")
    expect(page.locator("#issued-token")).to_contain_text("psk_")  # the new page, not one still loading
    _shot(page, "admin-tokens")
    page.goto(f"{base}/admin/audit")
    _shot(page, "admin-audit")
    context.clear_cookies()
    page.goto(f"{base}/login")
    if problems := _serious_violations(page, axe_source):
        found["/login"] = problems
    context.close()
    print("\n[axe-core] " + json.dumps({path: len(found.get(path, [])) for path in paths + ["/login"]}))
    assert not found, json.dumps(found, indent=1)
