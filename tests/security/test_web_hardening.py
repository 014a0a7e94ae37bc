"""Hardening at the web door: route ids beyond the database's integers, security headers, redirects after login,
and CSRF spared only by a valid bearer token."""
import io

import pytest

from core.services import services_of
from db.accounts import create_user, issue_token
from tests.helpers import bearer, csrf, login


@pytest.fixture
def admin(app):
    with services_of(app).sessions.begin() as session:
        return issue_token(session, create_user(session, "boss", "admin", "boss-password"))


@pytest.mark.parametrize("path", ["/batches/2147483648", "/api/v1/batches/99999999999999999999",
                                  "/review/9223372036854775808", "/api/v1/studies/2147483648/fhir"])
def test_ids_past_the_databases_integers_are_missing_not_errors(app, admin, path):
    assert app.test_client().get(path, headers=bearer(admin)).status_code == 404


def test_pages_carry_security_headers_and_are_not_cached(app):
    client = app.test_client()
    page = client.get("/login")
    assert "frame-ancestors 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY" and page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Cache-Control"] == "no-store"
    assert client.get("/static/style.css").headers.get("Cache-Control") != "no-store"


@pytest.mark.parametrize("target, landing", [
    # What a browser sends for next=/%09/evil.example arrives decoded, with a tab; an encoded one stays a path.
    ("/\t/evil.example", "/"), ("/%09/evil.example", "/%09/evil.example"), ("/\\evil.example", "/"), ("//evil.example", "/"),
    ("https://evil.example/", "/"), ("/\n/evil.example", "/"), ("javascript:alert(1)", "/"),
    ("/batches", "/batches"), ("/review/?status=closed", "/review/?status=closed")])
def test_a_login_only_ever_lands_on_this_site(app, admin, target, landing):
    client = app.test_client()
    form = client.get("/login")
    response = client.post("/login", query_string={"next": target},
                           data={"username": "boss", "password": "boss-password", "csrf_token": csrf(form.data)})
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location == landing and not location.startswith("//")


def test_only_a_valid_bearer_token_spares_the_csrf_check(app, admin):
    client = app.test_client()
    login(client, "boss", "boss-password")
    # A cookie session with some other Authorization header must still carry the CSRF token.
    posted = client.post("/api/v1/batches", headers={"Authorization": "Basic Ym9zczpib3Nz"},
                         data={"files": [(io.BytesIO(b"x"), "x.png")]}, content_type="multipart/form-data")
    assert posted.status_code == 400 and b"CSRF" in posted.data
    stow = client.post("/dicomweb/studies", headers={"Authorization": "Basic Ym9zczpib3Nz"},
                       data=b"--b--", content_type='multipart/related; type="application/dicom"; boundary=b')
    assert stow.status_code == 401
    # With a valid token no CSRF token is needed.
    fresh = app.test_client()
    assert fresh.post("/api/v1/batches", headers=bearer(admin), data={"files": [(io.BytesIO(b"x"), "x.png")]},
                      content_type="multipart/form-data").status_code == 422
