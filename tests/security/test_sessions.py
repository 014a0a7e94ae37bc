"""Sessions end when they should: logout and disable/enable end every copy of a cookie, an idle session
expires, parallel password guesses count each other, and an admin can unlock an account."""
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from core.services import services_of
from db.accounts import create_user, set_active
from db.models import User
from tests.helpers import csrf, login


def _user(app, name: str, role: str = "reviewer") -> None:
    with services_of(app).sessions.begin() as session:
        create_user(session, name, role, f"{name}-long-password")


def _copy_of(client, app):
    """A second browser holding the same session cookie (what a stolen cookie is)."""
    copy = app.test_client()
    cookie = client.get_cookie("session")
    copy.set_cookie(cookie.key, cookie.value)
    return copy


def test_a_copied_cookie_dies_with_logout(app):
    _user(app, "ana")
    client = app.test_client()
    login(client, "ana", "ana-long-password")
    stolen = _copy_of(client, app)
    assert stolen.get("/batches").status_code == 200
    page = client.get("/batches")
    assert client.post("/logout", data={"csrf_token": csrf(page.data)}).status_code == 302
    assert stolen.get("/batches").status_code == 302
    assert login(client, "ana", "ana-long-password").status_code == 302  # a new login works


def test_disable_and_enable_end_every_session(app):
    _user(app, "bo")
    client = app.test_client()
    login(client, "bo", "bo-long-password")
    stolen = _copy_of(client, app)
    with services_of(app).sessions.begin() as session:
        user = session.query(User).filter_by(username="bo").one()
        set_active(session, user, False, None)
        set_active(session, user, True, None)
    assert client.get("/batches").status_code == 302 and stolen.get("/batches").status_code == 302


def test_an_idle_session_expires(app):
    _user(app, "cy")
    app.permanent_session_lifetime = timedelta(seconds=1)
    client = app.test_client()
    login(client, "cy", "cy-long-password")
    assert client.get("/batches").status_code == 200
    time.sleep(2.2)
    assert client.get("/batches").status_code == 302


def test_parallel_guesses_are_counted_and_an_admin_unlocks(app):
    _user(app, "di")
    _user(app, "chief", role="admin")

    def guess(_):
        client = app.test_client()
        return login(client, "di", "wrong-password").status_code

    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(guess, range(12)))
    assert answers.count(401) <= 5 and answers.count(401) + answers.count(429) == 12
    client = app.test_client()
    assert login(client, "di", "di-long-password").status_code == 429  # locked, right password or not

    admin = app.test_client()
    login(admin, "chief", "chief-long-password")
    with services_of(app).sessions() as session:
        user_id = session.query(User.id).filter_by(username="di").scalar()
    page = admin.get("/admin/users")
    assert admin.post(f"/admin/users/{user_id}/unlock", data={"csrf_token": csrf(page.data)}).status_code == 302
    assert login(client, "di", "di-long-password").status_code == 302
