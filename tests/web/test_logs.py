"""Structured logs: JSON lines carrying the request id, and the id echoed to the caller."""
import io
import json
import logging

import pytest

from core.logs import configure
from core.settings import ConfigError, log_format_from_env


@pytest.fixture
def json_log():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure("json", logging.INFO)
    root.handlers[0].stream = stream
    yield stream
    root.handlers[:], root.level = saved[0], saved[1]


def test_requests_get_an_id_that_tags_their_log_lines(app, json_log):
    client = app.test_client()

    @app.get("/_log_probe")
    def probe():
        logging.getLogger("probe").info("inside the request")
        return "ok"

    given = client.get("/_log_probe", headers={"X-Request-ID": "pacs-42"})
    made = client.get("/_log_probe", headers={"X-Request-ID": "bad id with spaces"})

    assert given.headers["X-Request-ID"] == "pacs-42"
    assert len(made.headers["X-Request-ID"]) == 32
    lines = [json.loads(line) for line in json_log.getvalue().splitlines()]
    probes = [line for line in lines if line["message"] == "inside the request"]
    assert [p["request_id"] for p in probes] == ["pacs-42", made.headers["X-Request-ID"]]
    assert {"time", "level", "logger"} <= set(probes[0])


def test_log_format_setting_is_validated():
    assert log_format_from_env({}) == "text"
    assert log_format_from_env({"PNEUMOSCREEN_LOG_FORMAT": "json"}) == "json"
    with pytest.raises(ConfigError, match="PNEUMOSCREEN_LOG_FORMAT"):
        log_format_from_env({"PNEUMOSCREEN_LOG_FORMAT": "xml"})
