"""Every file handed over is accounted for: refused files are kept on their batch with the reason, counted,
listed in natural order and grouped by reason, in the page, the API and a CSV; a batch of only refused files
is still recorded. The batch page summarises (counts, filters, readable flags, the reviewer's decision)."""
import csv
import html
import io

import pytest
from sqlalchemy import func, select

from core.services import services_of
from db.models import Batch, BatchRejection, Study, User
from models.flags import REASON_TEXT
from models.reasons import FlagReason
from studies.files import Item
from studies.intake import submit_batch
from studies.rejections import grouped, natural_key
from studies.reviews import record_decision
from tests.helpers import bearer, chest_films, csrf, login
from worker import pipeline


@pytest.fixture
def client(app, users):
    return app.test_client()


def _user_id(app, username: str) -> int:
    with services_of(app).sessions() as session:
        return session.scalar(select(User.id).where(User.username == username))


def _upload(client, token, files: dict[str, bytes]):
    return client.post("/api/v1/batches", headers=bearer(token), content_type="multipart/form-data",
                       data={"files": [(io.BytesIO(data), name) for name, data in files.items()]})


def test_natural_order_and_grouping():
    names = ["film100.png", "film10.png", "Film2.png", "film1.png", "a.png"]
    assert sorted(names, key=natural_key) == ["a.png", "film1.png", "Film2.png", "film10.png", "film100.png"]
    groups = grouped([{"filename": "b", "reason": "empty file"}, {"filename": "a", "reason": "not an image"},
                      {"filename": "c", "reason": "empty file"}])
    assert groups == [{"reason": "empty file", "count": 2, "filenames": ["b", "c"]},
                      {"reason": "not an image", "count": 1, "filenames": ["a"]}]


def test_rejected_files_are_recorded_counted_and_listed_in_natural_order(app, client, users):
    films = chest_films(normal=2)
    junk = {f"junk{i}.png": b"not an image" for i in (100, 10, 2, 1)} | {"empty.png": b""}
    body = _upload(client, users["uploader"], films | junk).get_json()
    assert body["total"] == 2 and len(body["rejected"]) == 5

    batch = client.get(f"/api/v1/batches/{body['id']}", headers=bearer(users["uploader"])).get_json()
    assert batch["rejected"] == 5 and batch["total"] == 2 and batch["queued"] == 2
    assert [row["filename"] for row in batch["rejections"]] == [
        "empty.png", "junk1.png", "junk2.png", "junk10.png", "junk100.png"]
    assert batch["rejections"][0]["reason"] == "empty file"
    listing = client.get("/api/v1/batches", headers=bearer(users["uploader"])).get_json()
    assert listing["items"][0]["rejected"] == 5

    login(client, "uploader", "uploader-password")
    page = client.get(f"/batches/{body['id']}").data.decode()
    assert "2 queued, 5 rejected" in page  # the headline
    assert "<strong>4 ×</strong> not a PNG, JPEG or DICOM image" in page  # one reason, once, with its count
    assert page.index("junk2.png") < page.index("junk10.png") < page.index("junk100.png")
    assert '<dd class="rejected">5</dd>' in page
    assert "2 queued, <span" in client.get("/batches").data.decode()

    exported = client.get(f"/api/v1/batches/{body['id']}/rejections.csv")
    assert exported.status_code == 200 and exported.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(exported.data.decode("utf-8-sig"))))
    assert rows[0] == ["batch_id", "filename", "reason"] and len(rows) == 6
    assert rows[2] == [str(body["id"]), "junk1.png", "not a PNG, JPEG or DICOM image"]


def test_a_batch_of_only_refused_files_is_still_recorded(app, client, users):
    response = _upload(client, users["uploader"], {"a.txt": b"hello", "b.png": b""})
    body = response.get_json()
    assert response.status_code == 422 and body["id"] is not None and body["total"] == 0
    batch = client.get(f"/api/v1/batches/{body['id']}", headers=bearer(users["uploader"])).get_json()
    assert batch["total"] == 0 and batch["rejected"] == 2 and batch["status"] == "done"

    login(client, "uploader", "uploader-password")
    token = csrf(client.get("/upload").data)
    page = client.post("/upload", data={"csrf_token": token, "files": [(io.BytesIO(b"x"), "only.txt")]},
                       content_type="multipart/form-data", follow_redirects=True)
    text = page.data.decode()
    assert page.status_code == 200 and "0 queued, 1 rejected" in text and "<li>only.txt</li>" in text


def test_thousands_of_rejections_stay_small_rows(app, users):
    services = services_of(app)
    items = [Item(f"f{i}.png", error="x" * 5000) for i in range(2000)]
    batch, rejected = submit_batch(services, items, _user_id(app, "uploader"), "api")
    assert len(rejected) == 2000
    with services.sessions() as session:
        assert session.scalar(select(func.count()).select_from(BatchRejection)
                              .where(BatchRejection.batch_id == batch.id)) == 2000
        assert session.scalar(select(func.max(func.length(BatchRejection.reason)))) == 500
        assert session.get(Batch, batch.id) is not None


def test_batch_page_summarises_and_shows_the_reviewers_decision(app, client, users, stub_screener):
    services = services_of(app)
    body = _upload(client, users["uploader"], chest_films(normal=2, pneumonia=1)).get_json()
    with services.sessions() as session:
        ids = session.scalars(select(Study.id).where(Study.batch_id == body["id"]).order_by(Study.id)).all()
    pipeline.run_batch(services.sessions, services.storage, stub_screener, list(ids))
    with services.sessions.begin() as session:
        flagged = session.scalars(select(Study).where(Study.id.in_(ids), Study.flag.has())).all()
        assert flagged
        record_decision(session, flagged[0], _user_id(app, "reviewer"), "pneumonia", "")
        decided_id = flagged[0].id

    login(client, "uploader", "uploader-password")
    page = client.get(f"/batches/{body['id']}").data.decode()
    assert html.escape(REASON_TEXT[FlagReason.NEAR_THRESHOLD]) in page  # words, not "near_threshold"
    assert "Reviewer: <strong>pneumonia</strong> (reviewer" in page
    assert '<time datetime="' in page and " UTC</time>" in page
    assert '<dd class="flagged">' in page and 'id="filters"' in page
    hidden = client.get(f"/batches/{body['id']}?show=flagged").data.decode()
    unflagged = [i for i in ids if i not in {s.id for s in flagged}]
    assert f'id="study-{unflagged[0]}"' in hidden
    row = hidden[hidden.index(f'id="study-{unflagged[0]}"'):].split(">", 1)[0]
    assert "hidden" in row
    data = client.get(f"/api/v1/batches/{body['id']}").get_json()
    decided = next(s for s in data["studies"] if s["id"] == decided_id)
    assert decided["review_decision"] == "pneumonia" and decided["reviewer"] == "reviewer"
    assert decided["flag_text"] and not decided["out_of_scope"]


def test_out_of_scope_films_get_no_confident_call(app, client, users, stub_screener):
    from tests.dicom.factory import chest_pixels, dataset, to_bytes

    services = services_of(app)
    body = _upload(client, users["uploader"], {"lateral.dcm": to_bytes(dataset(chest_pixels(), view="LL"))}).get_json()
    with services.sessions() as session:
        ids = session.scalars(select(Study.id).where(Study.batch_id == body["id"])).all()
    pipeline.run_batch(services.sessions, services.storage, stub_screener, list(ids))
    data = client.get(f"/api/v1/batches/{body['id']}", headers=bearer(users["uploader"])).get_json()
    [study] = data["studies"]
    if study["not_applicable"]:  # routed away at the door: not screened at all
        expected = "Not screened"
    else:
        assert study["out_of_scope"]
        expected = "No reliable call (out of scope)"
    login(client, "uploader", "uploader-password")
    page = client.get(f"/batches/{body['id']}").data.decode()
    assert expected in page and 'class="call-pneumonia"' not in page and 'class="call-normal"' not in page
