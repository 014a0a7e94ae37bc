"""Sessions, CSRF, login throttling, logout, tokens (named, revocable, last used), disabled accounts."""
import re
from datetime import timedelta

import pytest
from sqlalchemy import event, select

from core.services import services_of
from db.models import ApiToken, AuditEvent, User, utcnow
from tests.helpers import bearer, csrf, login

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def test_login_is_throttled_after_repeated_failures(app, world):
    client = app.test_client()
    for _ in range(5):
        assert login(client, "uploader", "wrong-password").status_code == 401
    refused = login(client, "uploader", "uploader-password")
    assert refused.status_code == 429 and b"Too many failed logins" in refused.data
    assert login(client, "reviewer", "reviewer-password").status_code == 302  # others are not locked out


def test_old_failures_do_not_count(app, world):
    services = services_of(app)
    client = app.test_client()
    for _ in range(5):
        login(client, "admin", "wrong-password")
    with services.sessions.begin() as session:
        for event in session.scalars(select(AuditEvent).where(AuditEvent.action.startswith("user.login"))):
            event.at = utcnow() - timedelta(minutes=16)
    assert login(client, "admin", "admin-password").status_code == 302


def test_logout_ends_the_session_and_is_audited(app, world):
    services = services_of(app)
    client = app.test_client()
    assert login(client, "reviewer", "reviewer-password").status_code == 302
    page = client.get("/batches")
    assert page.status_code == 200
    assert client.post("/logout", data={"csrf_token": csrf(page.data)}).status_code == 302
    assert client.get("/batches").status_code == 302
    with services.sessions() as session:
        actions = session.scalars(select(AuditEvent.action).where(AuditEvent.actor_id == world.ids["reviewer_user"])).all()
    assert "user.login" in actions and "user.logout" in actions


def test_every_form_post_needs_the_csrf_token(app, world):
    client = app.test_client()
    assert login(client, "admin", "admin-password").status_code == 302
    ids = world.ids
    for path in ("/upload", f"/review/{ids['study']}", "/admin/users", f"/admin/users/{ids['spare_user']}/active",
                 "/admin/tokens", f"/admin/tokens/{ids['spare_token']}/revoke", "/logout", "/api/v1/batches",
                 f"/api/v1/studies/{ids['study']}/review"):
        response = client.post(path, data={"decision": "normal", "username": "x", "name": "x"})
        assert response.status_code == 400, path
    assert client.get("/batches").status_code == 200  # still signed in: nothing above took effect


def test_session_cookie_flags(app, world):
    app.config["SESSION_COOKIE_SECURE"] = True  # what PNEUMOSCREEN_SECURE_COOKIES=1 sets
    client = app.test_client()
    cookie = login(client, "admin", "admin-password").headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie


def test_tokens_are_named_hashed_tracked_and_revocable(app, world):
    services = services_of(app)
    client = app.test_client()
    assert login(client, "admin", "admin-password").status_code == 302
    page = client.post("/admin/tokens", data={"user_id": world.ids["spare_user"], "name": "pacs-bridge",
                                              "csrf_token": csrf(client.get("/admin/tokens").data)})
    token = re.search(rb'id="issued-token">(psk_[^<]+)<', page.data)[1].decode()
    with services.sessions() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == "pacs-bridge"))
        assert token not in row.token_hash and row.last_used_at is None
    assert app.test_client().get("/api/v1/batches/999", headers=bearer(token)).status_code == 404
    with services.sessions() as session:
        first_use = session.get(ApiToken, row.id).last_used_at
        assert first_use is not None
    # Kept to the minute: a script's next requests are no database writes...
    writes, user_reads = [], []
    event.listen(services.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *args: writes.append(statement) if "UPDATE api_tokens" in statement
                 else None)
    event.listen(services.engine, "before_cursor_execute",
                 lambda conn, cursor, statement, *args: user_reads.append(statement) if "FROM users" in statement
                 else None)
    for _ in range(3):
        assert app.test_client().get("/api/v1/batches/999", headers=bearer(token)).status_code == 404
    assert writes == []
    assert user_reads == []  # the token comes with its user: one query a request, not two
    # ...until a minute has gone by.
    with services.sessions.begin() as session:
        session.get(ApiToken, row.id).last_used_at = first_use - timedelta(minutes=2)
    assert app.test_client().get("/api/v1/batches/999", headers=bearer(token)).status_code == 404
    with services.sessions() as session:
        assert session.get(ApiToken, row.id).last_used_at > first_use
    listing = client.get("/admin/tokens").data
    assert token.encode() not in listing and b"pacs-bridge" in listing  # shown once, never again

    client.post(f"/admin/tokens/{row.id}/revoke", data={"csrf_token": csrf(listing)})
    assert app.test_client().get("/api/v1/batches/999", headers=bearer(token)).status_code == 401
    with services.sessions() as session:
        events = session.execute(select(AuditEvent.action, AuditEvent.actor_id)
                                 .where(AuditEvent.object_type == "api_token", AuditEvent.object_id == row.id)).all()
    assert set(events) == {("token.create", world.ids["admin_user"]), ("token.revoke", world.ids["admin_user"])}


def test_disabled_account_loses_its_tokens_and_session(app, world):
    services = services_of(app)
    token = world.tokens["other"]
    assert app.test_client().get("/batches", headers=bearer(token)).status_code == 200
    with services.sessions.begin() as session:
        session.get(User, world.ids["other_user"]).active = False
    assert app.test_client().get("/api/v1/review", headers=bearer(token)).status_code == 401
    assert login(app.test_client(), "other", "other-password").status_code == 401
