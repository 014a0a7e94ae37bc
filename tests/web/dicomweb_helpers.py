"""The app served by a real WSGI server in a thread, a dicomweb-client on it, and multipart reading for tests."""
import contextlib
import re
import threading
import uuid

import requests
from dicomweb_client import DICOMwebClient
from werkzeug.serving import make_server

from tests.helpers import bearer


@contextlib.contextmanager
def served(app):
    """Yield the DICOMweb base URL of `app` served on a free port (werkzeug, threaded)."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/dicomweb"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def dicomweb(base: str, token: str) -> DICOMwebClient:
    return DICOMwebClient(base, headers=bearer(token))


def stow(base: str, token: str, files: list[bytes], study: str | None = None) -> requests.Response:
    """POST raw DICOM bytes as they are (dicomweb-client would re-encode them)."""
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
                    for data in files) + f"--{boundary}--\r\n".encode()
    url = f"{base}/studies" + (f"/{study}" if study else "")
    return requests.post(url, data=body, timeout=60, headers={
        **bearer(token), "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})


def parts(response: requests.Response) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related answer, read independently of the server's code."""
    boundary = re.search(r"boundary=\"?([^\";]+)", response.headers["Content-Type"])[1].encode()
    found = []
    for chunk in response.content.split(b"--" + boundary)[1:-1]:
        head, _, body = chunk[2:].partition(b"\r\n\r\n")
        kind = re.search(rb"(?im)^content-type:\s*(.+?)\s*$", head)[1].decode()
        assert body.endswith(b"\r\n")
        found.append((kind, body[:-2]))
    return found
