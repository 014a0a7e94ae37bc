"""The portal as a person uses it: login with CSRF, upload a zip, batch pages, the review queue."""
import html
import io
import re

import pytest
from sqlalchemy import select

from core.services import services_of
from db.models import AuditEvent, ReviewFlag, Study
from models.flags import REASON_TEXT
from tests.helpers import chest_film, chest_films, csrf, login, zip_bytes
from worker import pipeline


@pytest.fixture
def client(app, users):
    return app.test_client()


def test_pages_need_login(client):
    for path in ("/", "/batches", "/upload", "/review/", "/batches/1", "/studies/1/thumb.png"):
        response = client.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"], path


def test_wrong_password_is_refused_and_audited(app, client):
    response = login(client, "uploader", "nope")
    assert response.status_code == 401 and b"Wrong username or password" in response.data
    assert client.get("/batches").status_code == 302
    with services_of(app).sessions() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action.like("user.login%"))).all()
    assert [(e.action, e.actor_id, e.detail["username"]) for e in events] == [
        ("user.login_attempt", None, "uploader"), ("user.login_failed", None, "uploader")]
    assert all("nope" not in str(event.detail) for event in events)  # the password tried is not kept


def test_form_posts_without_csrf_token_are_refused(client):
    response = client.post("/login", data={"username": "uploader", "password": "uploader-password"})
    assert response.status_code == 400


def test_upload_a_zip_then_see_results_and_review(app, client, stub_screener):
    services = services_of(app)
    assert login(client, "uploader", "uploader-password").status_code == 302
    films = chest_films(normal=2, pneumonia=1)
    archive = zip_bytes({f"study/{name}": data for name, data in films.items()} | {"study/x.txt": b"x"})
    token = csrf(client.get("/upload").data)

    response = client.post("/upload", data={"csrf_token": token, "files": [(io.BytesIO(archive), "films.zip")]},
                           content_type="multipart/form-data", follow_redirects=True)

    assert response.status_code == 200
    assert b"3 queued, 1 rejected" in response.data  # the headline; the refused file is listed on the batch
    assert b"<li>films.zip/study/x.txt</li>" in response.data and b"not a PNG, JPEG or DICOM image" in response.data
    assert b'class="bar big"' in response.data
    with services.sessions() as session:
        ids = session.scalars(select(Study.id)).all()
    pipeline.run_batch(services.sessions, services.storage, stub_screener, list(ids))
    page = client.get(response.request.path).data
    assert page.count(b"<img src=\"/studies/") == 3 and b"100%" in page
    image = client.get(f"/studies/{ids[0]}/thumb.png")
    assert image.status_code == 200 and image.data.startswith(b"\x89PNG")
    assert client.get(f"/studies/{ids[0]}/secret.png").status_code == 404
    assert client.get("/review/").status_code == 403

    with services.sessions() as session:
        names = dict(session.execute(select(Study.id, Study.filename)).all())
        flagged = sorted(session.scalars(select(ReviewFlag.study_id)).all())
    # The stub calls the films without an opacity NORMAL near the threshold: those, and only those, are flagged.
    assert sorted(names[i] for i in flagged) == ["films.zip/study/normal-0.jpeg", "films.zip/study/normal-1.jpeg"]
    reviewer = app.test_client()
    login(reviewer, "reviewer", "reviewer-password")
    queue = reviewer.get("/review/").data
    assert sorted(int(i) for i in re.findall(rb'href="/review/(\d+)"', queue)) == flagged
    study_page = reviewer.get(f"/review/{flagged[0]}").data
    assert b"Lung crop" in study_page and b'value="pneumonia"' in study_page
    with services.sessions() as session:
        reasons = session.scalar(select(ReviewFlag.reasons).where(ReviewFlag.study_id == flagged[0]))
    # Each reason is explained in words, not just named.
    assert all(html.escape(REASON_TEXT[reason]).encode() in study_page for reason in reasons)
    response = reviewer.post(f"/review/{flagged[0]}", data={"csrf_token": csrf(study_page),
                                                            "decision": "normal", "note": "clear"})
    assert response.status_code == 302
    with services.sessions() as session:
        flag = session.scalar(select(ReviewFlag).where(ReviewFlag.study_id == flagged[0]))
        assert flag.status == "closed" and flag.latest.decision == "normal" and flag.latest.note == "clear"
    assert f"/review/{flagged[0]}".encode() in reviewer.get("/review/?status=closed").data


def test_uploaders_see_only_their_own_batches(app, client):
    from db.accounts import create_user

    with services_of(app).sessions.begin() as session:
        create_user(session, "other", "uploader", "other-password")
    login(client, "uploader", "uploader-password")
    token = csrf(client.get("/upload").data)
    response = client.post("/upload", data={"csrf_token": token, "files": [(io.BytesIO(chest_film()), "film.jpeg")]},
                           content_type="multipart/form-data")
    batch_path = response.headers["Location"]
    other = app.test_client()
    login(other, "other", "other-password")
    assert other.get(batch_path).status_code == 404
    assert batch_path.encode() not in other.get("/batches").data
    assert client.get(batch_path).status_code == 200


def test_logout_ends_the_session(client):
    login(client, "admin", "admin-password")
    page = client.get("/batches").data
    assert client.post("/logout", data={"csrf_token": csrf(page)}).status_code == 302
    assert client.get("/batches").status_code == 302
