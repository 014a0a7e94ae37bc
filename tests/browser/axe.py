"""axe-core (from npm) for browser tests: installed once into tests/browser/node_modules (where
tests/browser/test_portal_pages.py puts it too) when not present."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO

AXE_VERSION = "4"
AXE_HOME = REPO / "tests" / "browser"


def axe_script() -> Path:
    """axe.min.js: $AXE_CORE_JS, node_modules/ in the checkout, or `npm install axe-core` into tests/browser."""
    candidates = [Path(os.environ["AXE_CORE_JS"])] if os.environ.get("AXE_CORE_JS") else []
    candidates += [REPO / "node_modules/axe-core/axe.min.js", AXE_HOME / "node_modules/axe-core/axe.min.js"]
    for path in candidates:
        if path.exists():
            return path
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("axe-core is not installed and npm is not available (apt-get install -y npm)")
    subprocess.run([npm, "install", "--no-save", "--no-package-lock", "--no-audit", "--no-fund", "--prefix",
                    str(AXE_HOME), f"axe-core@{AXE_VERSION}"], check=True, capture_output=True, timeout=300)
    return candidates[-1]


def axe_violations(page) -> list[dict]:
    """axe-core's violations on the page as it stands (WCAG 2.1 A and AA rules and best practices)."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(axe_script()))  # needs a context with bypass_csp=True
    return page.evaluate("axe.run(document, {resultTypes: ['violations']}).then(r => r.violations)")
