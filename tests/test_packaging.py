"""A non-editable install (what the Docker image does) must carry weights, templates and migrations."""
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # builds a wheel with pip


def test_wheel_contains_everything_the_service_loads(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(REPO)], check=True, timeout=300)
    wheel = next(tmp_path.glob("pneumoscreen-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"models/weights/{path.name}" for path in (REPO / "models" / "weights").iterdir()}
    expected |= {f"web/templates/{path.name}" for path in (REPO / "web" / "templates").glob("*.html")}
    expected |= {f"db/migrations/versions/{path.name}" for path in (REPO / "db" / "migrations" / "versions").glob("*.py")}
    expected |= {"db/migrations/env.py", "db/migrations/script.py.mako", "web/static/progress.js"}
    assert expected <= names, sorted(expected - names)
