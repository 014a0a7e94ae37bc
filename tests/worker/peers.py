"""Real receivers for the outbound tests: a RIS speaking MLLP and a FHIR server, each in a thread of the test."""
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import hl7
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

START, END = b"\x0b", b"\x1c\x0d"


class MllpPeer:
    """A RIS: parses each message with python-hl7 and answers from `answers` in turn ("AA", "AE", "AR", or
    "silent": hold the connection and never answer); the last answer repeats."""

    def __init__(self, answers=("AA",), delay: float = 0.0):
        self.answers, self.delay = list(answers), delay
        self.received: list[hl7.Message] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(connection,), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            data = b""
            while END not in data:
                chunk = connection.recv(4096)
                if not chunk:
                    return
                data += chunk
            assert data.startswith(START), data[:20]
            message = hl7.parse(data[1:data.index(END)].decode("ascii"))
            with self._lock:
                self.received.append(message)
                answer = self.answers[min(len(self.received), len(self.answers)) - 1]
            if answer == "silent":
                while connection.recv(4096):
                    pass
                return
            threading.Event().wait(self.delay)
            connection.sendall(START + str(message.create_ack(answer)).encode() + END)

    def control_ids(self) -> list[str]:
        return [str(message.segment("MSH")[10]) for message in self.received]

    def close(self) -> None:
        self.server.close()


class FhirPeer:
    """A FHIR server: takes conditional updates of DiagnosticReports, validates each as FHIR R4(B) and records it;
    `statuses` in turn answer the requests (the last repeats)."""

    def __init__(self, statuses=(None,), token: str | None = None):
        self.requests: list[dict] = []
        self.known: set[str] = set()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                parts = urlsplit(self.path)
                record = {"path": parts.path, "query": parse_qs(parts.query), "headers": dict(self.headers),
                          "body": json.loads(body)}
                peer.requests.append(record)
                forced = statuses[min(len(peer.requests), len(statuses)) - 1]
                if forced:
                    return self._send(forced, {"resourceType": "OperationOutcome", "issue": [
                        {"severity": "error", "code": "exception", "diagnostics": "the store is down"}]})
                if token and self.headers.get("Authorization") != f"Bearer {token}":
                    return self._send(401, {"resourceType": "OperationOutcome"})
                if self.headers.get("Content-Type") != "application/fhir+json":
                    return self._send(415, {"resourceType": "OperationOutcome"})
                try:
                    record["report"] = DiagnosticReport.model_validate(record["body"])
                except ValueError as exc:  # pydantic's ValidationError: not a valid DiagnosticReport
                    record["invalid"] = str(exc)
                    return self._send(422, {"resourceType": "OperationOutcome"})
                identifier = record["query"]["identifier"][0]
                created = identifier not in peer.known
                peer.known.add(identifier)
                self._send(201 if created else 200, record["body"] | {"id": "1"})

            def _send(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class StorePeer:
    """A PACS: a pynetdicom storage SCP for SR and Secondary Capture that keeps what arrives."""

    def __init__(self):
        from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage
        from pynetdicom import AE, evt

        self.received = []
        ae = AE(ae_title="TESTPACS")
        for sop_class in (ComprehensiveSRStorage, SecondaryCaptureImageStorage):
            ae.add_supported_context(sop_class)
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = self.server.server_address[1]

    def _store(self, event) -> int:
        self.received.append(event.dataset)
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()
