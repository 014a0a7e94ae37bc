"""`pneumoscreen up` on the embedded default: no Redis, no PostgreSQL; start, upload, results, Ctrl-C."""
import re
import signal
import subprocess
import sys
import threading

import pytest
import requests

from tests.helpers import chest_films, free_port, http_status, wait_until

pytestmark = pytest.mark.slow  # a real `pneumoscreen up` process: portal, worker, TensorFlow start-up


def test_up_serves_portal_and_worker_then_stops_on_ctrl_c(tmp_path, tiny_weights):
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "PNEUMOSCREEN_DATA_DIR": str(tmp_path / "var"),
           "PNEUMOSCREEN_WEIGHTS_DIR": str(tiny_weights), "PNEUMOSCREEN_BATCH_SIZE": "4"}
    process = subprocess.Popen([sys.executable, "-m", "pneumoscreen", "up", "--port", str(port)],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    try:
        token = wait_until(lambda: re.search(r"API token (psk_\S+)", "".join(output)), "the admin token", 60, 0.5)[1]
        password = re.search(r"user 'admin' with password (\S+)", "".join(output))[1]
        wait_until(lambda: http_status(f"{base}/healthz") == 200, "the portal", 60, 0.5)

        films = chest_films(normal=3, pneumonia=3)
        response = requests.post(f"{base}/api/v1/batches", headers={"Authorization": f"Bearer {token}"},
                                 files=[("files", item) for item in films.items()], timeout=30)
        assert response.status_code == 202, response.text
        batch_url = f"{base}/api/v1/batches/{response.json()['id']}"
        batch = wait_until(lambda: _done(batch_url, token), "the batch to finish", 120, 0.5)
        assert batch["done"] == 6 and batch["failed"] == 0
        assert all(s["prediction"] in ("NORMAL", "PNEUMONIA") and s["model_version"] for s in batch["studies"])

        browser = requests.Session()
        login = browser.get(f"{base}/login", timeout=10).text
        csrf = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', login)[1]
        page = browser.post(f"{base}/login", data={"username": "admin", "password": password,
                                                    "csrf_token": csrf}, timeout=10)
        assert page.status_code == 200 and "Batches" in page.text and "100%" in page.text
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=60)
    assert code == 0, "".join(output)[-3000:]
    assert "pneumoscreen stopped" in "".join(output)
    assert http_status(f"{base}/healthz") is None


def _done(url: str, token: str) -> dict | None:
    batch = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    return batch if batch["status"] == "done" else None
