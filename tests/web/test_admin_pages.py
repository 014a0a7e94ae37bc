"""Admin pages: departments unique whatever their case, users edited and reset, tokens that expire, the audit
trail with security events apart from results, filters and pages. On SQLite and PostgreSQL."""
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from core.services import services_of
from db.accounts import ensure_department, issue_token, user_for_token
from db.models import ApiToken, AuditEvent, Department, User, utcnow
from db.session import audit
from tests.helpers import bearer, csrf, login


@pytest.fixture
def admin(app, users):
    client = app.test_client()
    login(client, "admin", "admin-password")
    return client


def _post(client, path: str, page: str, **fields):
    return client.post(path, data={"csrf_token": csrf(client.get(page).data), **fields})


def _ids(app, model, column, value) -> int:
    with services_of(app).sessions() as session:
        return session.scalar(select(model.id).where(column == value))


def test_departments_are_unique_whatever_their_case(app, admin):
    assert _post(admin, "/admin/departments", "/admin/departments", name="Radiology North").status_code == 302
    again = _post(admin, "/admin/departments", "/admin/departments", name="radiology  north ")
    assert again.status_code == 400 and "already exists" in again.data.decode()
    with services_of(app).sessions.begin() as session:
        assert ensure_department(session, "RADIOLOGY NORTH").name == "Radiology North"
        assert session.scalar(select(Department.id).where(Department.name == "RADIOLOGY NORTH")) is None
    with services_of(app).sessions() as session:  # the database refuses it too (unique index on lower(name))
        session.add(Department(name="radiology north"))
        with pytest.raises(IntegrityError):
            session.flush()


def test_departments_are_renamed_but_never_onto_another(app, admin):
    for name in ("Ward A", "Ward B"):
        _post(admin, "/admin/departments", "/admin/departments", name=name)
    ward_a = _ids(app, Department, Department.name, "Ward A")
    assert _post(admin, f"/admin/departments/{ward_a}", "/admin/departments", name="Ward C").status_code == 302
    clash = _post(admin, f"/admin/departments/{ward_a}", "/admin/departments", name="ward b")
    assert "already exists" in admin.get(clash.headers["Location"]).data.decode()
    assert _ids(app, Department, Department.name, "Ward C") == ward_a
    with services_of(app).sessions() as session:
        renames = session.scalars(select(AuditEvent.detail).where(AuditEvent.action == "department.rename")).all()
    assert renames == [{"old": "Ward A", "name": "Ward C"}]


def test_users_get_a_department_from_the_list_and_can_be_edited(app, admin, users):
    _post(admin, "/admin/departments", "/admin/departments", name="Chest")
    chest = _ids(app, Department, Department.name, "Chest")
    page = admin.get("/admin/users").data.decode()
    assert f'<option value="{chest}">Chest</option>' in page
    created = _post(admin, "/admin/users", "/admin/users", username="newbie", role="uploader", department=chest,
                    password="violet ledger tramway")
    assert created.status_code == 302
    with services_of(app).sessions() as session:
        newbie = session.scalar(select(User).where(User.username == "newbie"))
        assert newbie.department_id == chest and newbie.role == "uploader"
    unknown = _post(admin, "/admin/users", "/admin/users", username="x", role="uploader", department=999999)
    assert unknown.status_code == 400

    # The uploader's session ends when their role changes: the new rights apply at once.
    uploader = app.test_client()
    login(uploader, "uploader", "uploader-password")
    assert uploader.get("/upload").status_code == 200
    uploader_id = _ids(app, User, User.username, "uploader")
    edited = _post(admin, f"/admin/users/{uploader_id}", "/admin/users", role="reviewer", department=chest)
    assert edited.status_code == 302
    assert uploader.get("/upload").status_code == 302  # back to login
    with services_of(app).sessions() as session:
        user = session.get(User, uploader_id)
        assert (user.role, user.department_id) == ("reviewer", chest)
        assert session.scalar(select(AuditEvent.detail).where(AuditEvent.action == "user.update"))["was_role"] \
            == "uploader"
    bad = _post(admin, f"/admin/users/{uploader_id}", "/admin/users", role="superuser", department=chest)
    assert "Not a valid choice" in admin.get(bad.headers["Location"]).data.decode()
    admin_id = _ids(app, User, User.username, "admin")
    own = _post(admin, f"/admin/users/{admin_id}", "/admin/users", role="uploader", department=0)
    assert "cannot take the admin role" in admin.get(own.headers["Location"]).data.decode()


def test_password_reset_applies_the_strength_rule_and_ends_sessions(app, admin, users):
    reviewer_id = _ids(app, User, User.username, "reviewer")
    reader = app.test_client()
    login(reader, "reviewer", "reviewer-password")
    weak = _post(admin, f"/admin/users/{reviewer_id}/password", "/admin/users", password="password123")
    assert "too easy to guess" in admin.get(weak.headers["Location"]).data.decode()
    assert login(app.test_client(), "reviewer", "reviewer-password").status_code == 302  # unchanged
    _post(admin, f"/admin/users/{reviewer_id}/password", "/admin/users", password="copper lantern meadow")
    assert reader.get("/batches").status_code == 302  # the open session ended
    assert login(app.test_client(), "reviewer", "copper lantern meadow").status_code == 302
    assert login(app.test_client(), "reviewer", "reviewer-password").status_code == 401


def test_destructive_actions_ask_first_and_locked_users_are_shown(app, admin, users):
    for _ in range(6):
        login(app.test_client(), "uploader", "wrong")
    page = admin.get("/admin/users").data.decode()
    assert "data-confirm=\"Disable uploader?" in page and "<strong>locked</strong>" in page
    uploader_id = _ids(app, User, User.username, "uploader")
    assert _post(admin, f"/admin/users/{uploader_id}/unlock", "/admin/users").status_code == 302
    assert "<strong>locked</strong>" not in admin.get("/admin/users").data.decode()
    assert 'data-confirm="Revoke token' in admin.get("/admin/tokens").data.decode()


def test_tokens_expire_and_are_shown_as_expired(app, admin, users):
    issued = _post(admin, "/admin/tokens", "/admin/tokens", user_id=_ids(app, User, User.username, "uploader"),
                   name="bridge", expires=30).data.decode()
    assert 'data-copy="issued-token"' in issued
    with services_of(app).sessions.begin() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.name == "bridge"))
        assert timedelta(days=29) < row.expires_at.replace(tzinfo=None) - utcnow().replace(tzinfo=None) \
            <= timedelta(days=30)
        user = session.get(User, row.user_id)
        stale = issue_token(session, user, "stale", expires_at=utcnow() - timedelta(seconds=1))
        fresh = issue_token(session, user, "fresh", expires_at=utcnow() + timedelta(hours=1))
    with services_of(app).sessions() as session:
        assert user_for_token(session, stale) is None and user_for_token(session, fresh) is not None
    client = app.test_client()
    assert client.get("/api/v1/batches", headers=bearer(stale)).status_code == 401
    assert client.get("/api/v1/batches", headers=bearer(fresh)).status_code == 200
    page = admin.get("/admin/tokens").data.decode()
    assert page.count('class="token-expired">expired') == 1 and "never" in page


def test_audit_trail_keeps_security_apart_filters_and_pages(app, admin, users):
    with services_of(app).sessions.begin() as session:
        admin_id = session.scalar(select(User.id).where(User.username == "admin"))
        for i in range(130):
            audit(session, None, "study.result", "study", i)
        audit(session, admin_id, "review.decision", "study", 1)
    security = admin.get("/admin/audit").data.decode()
    assert "<td>user.login</td>" in security and "<td>study.result</td>" not in security
    results = admin.get("/admin/audit?kind=results").data.decode()
    assert "131 events, page 1 of 2" in results and "<td>user.login</td>" not in results
    second = admin.get("/admin/audit?kind=results&page=2").data.decode()
    assert "page 2 of 2" in second and "← Newer" in second
    by_actor = admin.get("/admin/audit?kind=results&actor=admin").data.decode()
    assert "1 event," in by_actor and "review.decision" in by_actor
    by_action = admin.get("/admin/audit?kind=all&action=review.").data.decode()
    assert "1 event," in by_action
    today = utcnow().date()
    assert "0 events" in admin.get(f"/admin/audit?kind=all&until={today - timedelta(days=1)}").data.decode()
    assert "0 events" not in admin.get(f"/admin/audit?kind=all&since={today}").data.decode()
    assert admin.get("/admin/audit?since=not-a-date").status_code == 200
    exported = admin.get("/admin/audit.csv?kind=results&actor=admin").data.decode()
    assert exported.count("review.decision") == 1 and "study.result" not in exported
