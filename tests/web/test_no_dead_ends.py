"""No dead ends: branded error pages with a way back (JSON under /api/ and /dicomweb/), an expired form or a lost
session back to login and then to the same place, the idle logoff's return path, and the 413 page."""
import io
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.helpers import bearer, csrf, login


@pytest.fixture
def client(app, users):
    return app.test_client()


def _next(location: str) -> str:
    """Where the login page will send the person: its `next`."""
    parts = urlsplit(location)
    assert parts.path == "/login"
    return parse_qs(parts.query)["next"][0]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_error_pages_are_branded_with_a_way_back(app, client):
    login(client, "uploader", "uploader-password")
    missing = client.get("/batches/424242", headers={"Referer": "http://localhost/batches"})
    text = missing.data.decode()
    assert missing.status_code == 404 and "Nothing here" in text and 'href="/batches"' in text
    assert 'class="brand"' in text and "Start page" in text
    forbidden = client.get("/admin/users").data.decode()
    assert "This page is not for your role" in forbidden and "ask an administrator" in forbidden
    assert client.get("/nowhere").status_code == 404
    # The referrer of another site is never offered as the way back.
    elsewhere = client.get("/batches/424242", headers={"Referer": "https://evil.example/batches"}).data.decode()
    assert "evil.example" not in elsewhere


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_api_and_dicomweb_errors_stay_json(app, client, users):
    for path in ("/api/v1/batches/424242", "/api/v1/nowhere", "/dicomweb/nowhere"):
        response = client.get(path, headers=bearer(users["uploader"]))
        assert response.status_code == 404 and response.is_json and response.get_json()["error"], path


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_over_the_limit_gets_the_branded_413_page(app, client):
    login(client, "uploader", "uploader-password")
    token = csrf(client.get("/upload").data)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    response = client.post("/upload", data={"csrf_token": token, "files": [(io.BytesIO(bytes(100 * 1024)), "x.png")]},
                           content_type="multipart/form-data")
    text = response.data.decode()
    assert response.status_code == 413 and "Too large to upload in one go" in text and "upload limit" in text
    assert 'class="brand"' in text


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_500_is_branded_and_rolled_back(app, client, monkeypatch):
    from web import batches

    login(client, "uploader", "uploader-password")
    app.config["PROPAGATE_EXCEPTIONS"] = False
    monkeypatch.setattr(batches, "batch_progress", lambda *a: 1 / 0)
    response = client.get("/batches")
    assert response.status_code == 500 and "Something went wrong on our side" in response.data.decode()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_lost_session_goes_to_login_then_back_with_the_form_restored(app, client):
    login(client, "uploader", "uploader-password")
    token = csrf(client.get("/upload").data)
    client.delete_cookie("session")  # the session ended (idle timeout, restart with a new key)
    response = client.post("/upload", data={"csrf_token": token}, headers={"Referer": "http://localhost/upload?x=1"})
    assert response.status_code == 302
    location = response.headers["Location"]
    assert _next(location) == "/upload?x=1&restore=1"
    page = client.get(location).data.decode()
    assert "Your session ended" in page
    back = client.post(location, data={"username": "uploader", "password": "uploader-password",
                                       "csrf_token": csrf(page.encode())})
    assert back.status_code == 302 and back.headers["Location"] == "/upload?x=1&restore=1"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_stale_form_of_a_live_session_goes_back_to_the_same_page(app, client):
    login(client, "admin", "admin-password")
    response = client.post("/admin/users", data={"csrf_token": "stale", "username": "x"},
                           headers={"Referer": "http://localhost/admin/users"})
    text = response.data.decode()
    assert response.status_code == 400 and "This form had expired" in text and "Nothing was saved" in text
    assert '<a href="/admin/users?restore=1">Back to the form</a>' in text
    # A JSON caller with a cookie session is told in JSON.
    api = client.post("/api/v1/studies/1/review", json={"decision": "normal"}, headers={"Accept": "application/json"})
    assert api.status_code == 400 and "CSRF" in api.get_json()["error"] and "Reload" in api.get_json()["error"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_csrf_tokens_live_as_long_as_the_session(app):
    assert app.config["WTF_CSRF_TIME_LIMIT"] is None  # the idle timeout bounds the session, and so the token


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_idle_logoff_returns_to_the_same_place_after_login(app, client):
    login(client, "uploader", "uploader-password")
    page = client.get("/batches").data.decode()
    assert f'data-idle-minutes="{app.config["PERMANENT_SESSION_LIFETIME"].seconds // 60}"' in page
    assert client.get("/session/ping").get_json()["idle_minutes"] == 30
    response = client.post("/logout", data={"csrf_token": csrf(page.encode()), "next": "/batches?restore=1",
                                            "idle": "1"})
    assert _next(response.headers["Location"]) == "/batches?restore=1"
    assert "without activity" in client.get(response.headers["Location"]).data.decode()
    assert client.get("/session/ping").status_code == 302  # logged out: the page script goes to login
    # Never to another site.
    login(client, "uploader", "uploader-password")
    page = client.get("/batches").data.decode()
    evil = client.post("/logout", data={"csrf_token": csrf(page.encode()), "next": "//evil.example/"})
    assert evil.headers["Location"] == "/login"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_login_keeps_the_query_of_the_page_asked_for(app, client):
    response = client.get("/batches/3?show=flagged")
    assert _next(response.headers["Location"]) == "/batches/3?show=flagged"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_upload_page_offers_dicom_folders_and_checks_the_size(app, client):
    login(client, "uploader", "uploader-password")
    page = client.get("/upload").data.decode()
    assert "PNG, JPEG or DICOM" in page and "webkitdirectory" in page and 'data-max-mb="1024"' in page
    assert "accept=" not in page  # the file dialog hides nothing: DICOM files often have no extension
    assert 'for="files"' in page and 'id="files"' in page  # labelled inputs
