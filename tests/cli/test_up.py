"""`pneumoscreen up` on the embedded default: no Redis, no PostgreSQL; start, upload, results, Ctrl-C."""
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import requests

from tests.helpers import sample_films


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_up_serves_portal_and_worker_then_stops_on_ctrl_c(tmp_path, tiny_weights):
    port = _free_port()
    env = {"PATH": "/usr/bin:/bin", "PNEUMOSCREEN_DATA_DIR": str(tmp_path / "var"),
           "PNEUMOSCREEN_WEIGHTS_DIR": str(tiny_weights), "PNEUMOSCREEN_BATCH_SIZE": "4"}
    process = subprocess.Popen([sys.executable, "-m", "pneumoscreen", "up", "--port", str(port)],
                               cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    try:
        token = _wait(lambda: re.search(r"API token (psk_\S+)", "".join(output)), 60, "the admin token")[1]
        password = re.search(r"user 'admin' with password (\S+)", "".join(output))[1]
        _wait(lambda: _get(f"{base}/healthz") == 200, 60, "the portal")

        films = sample_films("NORMAL", 3) + sample_films("PNEUMONIA", 3)
        response = requests.post(f"{base}/api/v1/batches", headers={"Authorization": f"Bearer {token}"},
                                 files=[("files", (p.name, p.read_bytes())) for p in films], timeout=30)
        assert response.status_code == 202, response.text
        batch_url = f"{base}/api/v1/batches/{response.json()['id']}"
        batch = _wait(lambda: _done(batch_url, token), 120, "the batch to finish")
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
    assert _get(f"{base}/healthz") is None


def _get(url: str) -> int | None:
    try:
        return requests.get(url, timeout=5).status_code
    except requests.ConnectionError:
        return None


def _done(url: str, token: str) -> dict | None:
    batch = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    return batch if batch["status"] == "done" else None
