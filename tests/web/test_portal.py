"""The portal as a person uses it: login with CSRF, upload a zip, batch pages, the review queue."""
import html
import io
import re

import pytest
from sqlalchemy import select

from db.models import ReviewFlag, Study
from models.flags import REASON_TEXT
from tests.conftest import sample_films, zip_bytes
from worker import pipeline


def _csrf(page: bytes) -> str:
    return re.search(rb'name="csrf_token"[^>]*value="([^"]+)"', page)[1].decode()


def _login(client, username: str, password: str):
    token = _csrf(client.get("/login").data)
    return client.post("/login", data={"username": username, "password": password, "csrf_token": token})


@pytest.fixture
def client(app, users):
    return app.test_client()


def test_pages_need_login(client):
    for path in ("/", "/batches", "/upload", "/review/", "/batches/1", "/studies/1/thumb.png"):
        response = client.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"], path


def test_wrong_password_is_refused_and_audited(app, client):
    response = _login(client, "uploader", "nope")
    assert response.status_code == 401 and b"Wrong username or password" in response.data
    assert client.get("/batches").status_code == 302


def test_form_posts_without_csrf_token_are_refused(client):
    response = client.post("/login", data={"username": "uploader", "password": "uploader-password"})
    assert response.status_code == 400


def test_upload_a_zip_then_see_results_and_review(app, client):
    services = app.extensions["pneumoscreen"]
    assert _login(client, "uploader", "uploader-password").status_code == 302
    films = sample_films("NORMAL", 2) + sample_films("PNEUMONIA", 1)
    archive = zip_bytes({f"study/{p.name}": p.read_bytes() for p in films} | {"study/x.txt": b"x"})
    token = _csrf(client.get("/upload").data)

    response = client.post("/upload", data={"csrf_token": token, "files": [(io.BytesIO(archive), "films.zip")]},
                           content_type="multipart/form-data", follow_redirects=True)

    assert response.status_code == 200
    assert b"3 studies queued" in response.data and b"films.zip/study/x.txt: not a PNG or JPEG image" in response.data
    assert b'class="bar big"' in response.data
    with services.sessions() as session:
        ids = session.scalars(select(Study.id)).all()
    pipeline.run_batch(services.sessions, services.storage,
                       pipeline.load_screener(services.settings.weights_dir), list(ids))
    page = client.get(response.request.path).data
    assert page.count(b"<img src=\"/studies/") == 3 and b"100%" in page
    image = client.get(f"/studies/{ids[0]}/thumb.png")
    assert image.status_code == 200 and image.data.startswith(b"\x89PNG")
    assert client.get(f"/studies/{ids[0]}/secret.png").status_code == 404
    assert client.get("/review/").status_code == 403

    with services.sessions.begin() as session:
        if not session.scalars(select(ReviewFlag)).all():
            session.add(ReviewFlag(study_id=ids[0], reason="near_threshold"))
        flagged = session.scalars(select(ReviewFlag.study_id)).all()
    reviewer = app.test_client()
    _login(reviewer, "reviewer", "reviewer-password")
    queue = reviewer.get("/review/").data
    assert all(f"/review/{study_id}".encode() in queue for study_id in flagged)
    study_page = reviewer.get(f"/review/{flagged[0]}").data
    assert b"Lung crop" in study_page and b'value="pneumonia"' in study_page
    with services.sessions() as session:
        reasons = session.scalar(select(ReviewFlag.reason).where(ReviewFlag.study_id == flagged[0])).split(",")
    # Each reason is explained in words, not just named.
    assert all(html.escape(REASON_TEXT[reason]).encode() in study_page for reason in reasons)
    response = reviewer.post(f"/review/{flagged[0]}", data={"csrf_token": _csrf(study_page),
                                                            "decision": "normal", "note": "clear"})
    assert response.status_code == 302
    with services.sessions() as session:
        flag = session.scalar(select(ReviewFlag).where(ReviewFlag.study_id == flagged[0]))
        assert flag.status == "closed" and flag.latest.decision == "normal" and flag.latest.note == "clear"
    assert f"/review/{flagged[0]}".encode() in reviewer.get("/review/?status=closed").data


def test_uploaders_see_only_their_own_batches(app, client):
    from db.accounts import create_user

    with app.extensions["pneumoscreen"].sessions.begin() as session:
        create_user(session, "other", "uploader", "other-password")
    _login(client, "uploader", "uploader-password")
    token = _csrf(client.get("/upload").data)
    film = sample_films("NORMAL", 1)[0]
    response = client.post("/upload", data={"csrf_token": token, "files": [(io.BytesIO(film.read_bytes()), film.name)]},
                           content_type="multipart/form-data")
    batch_path = response.headers["Location"]
    other = app.test_client()
    _login(other, "other", "other-password")
    assert other.get(batch_path).status_code == 404
    assert batch_path.encode() not in other.get("/batches").data
    assert client.get(batch_path).status_code == 200


def test_logout_ends_the_session(client):
    _login(client, "admin", "admin-password")
    page = client.get("/batches").data
    assert client.post("/logout", data={"csrf_token": _csrf(page)}).status_code == 302
    assert client.get("/batches").status_code == 302
