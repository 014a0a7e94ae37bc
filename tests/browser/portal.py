"""`pneumoscreen up` on the embedded default for the browser tests."""
import contextlib
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterator

from tests.helpers import free_port, http_status, wait_until


@contextlib.contextmanager
def running_portal(home: Path, weights: Path) -> Iterator[tuple[str, str]]:
    """`pneumoscreen up` in `home` on a free port: yields (base url, admin password); Ctrl-C at the end."""
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "PNEUMOSCREEN_DATA_DIR": str(home / "var"),
           "PNEUMOSCREEN_WEIGHTS_DIR": str(weights), "PNEUMOSCREEN_BATCH_SIZE": "4"}
    process = subprocess.Popen([sys.executable, "-m", "pneumoscreen", "up", "--port", str(port)], cwd=home,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    try:
        password = wait_until(lambda: re.search(r"user 'admin' with password (\S+)", "".join(output)),
                              "admin", 60, 0.5)[1]
        wait_until(lambda: http_status(f"{base}/healthz") == 200, "the portal", 60, 0.5)
        yield base, password
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
