"""`pneumoscreen web` stays reachable while many slow clients hold connections open (loopback only, bounded)."""
import socket
import subprocess
import sys

import pytest
import requests

from tests.helpers import free_port, http_status, wait_until

SLOW_CLIENTS = 120  # more than waitress's default connection limit of 100


@pytest.mark.slow
def test_health_answers_with_many_slow_connections_open(tmp_path, tiny_weights):
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "PNEUMOSCREEN_DATA_DIR": str(tmp_path / "var"),
           "PNEUMOSCREEN_WEIGHTS_DIR": str(tiny_weights)}
    server = subprocess.Popen([sys.executable, "-m", "pneumoscreen", "web", "--port", str(port)], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    slow = []
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_status(f"{base}/healthz") == 200, "the portal", timeout=60, every=0.3)
        for _ in range(SLOW_CLIENTS):  # each sends half a request and then nothing
            client = socket.create_connection(("127.0.0.1", port), timeout=5)
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            slow.append(client)
        answer = requests.get(f"{base}/healthz", timeout=10)
        assert answer.status_code == 200 and answer.json()["database"] == "ok"
    finally:
        for client in slow:
            client.close()
        server.terminate()
        server.wait(timeout=20)
