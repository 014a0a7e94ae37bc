"""The reader's workstation through the Flask test client: the full-depth film, every study open to a reader,
the queue in lanes ranked by risk, claims, stale decisions refused (409) and third reads."""
import gzip
import re
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import select

from core.services import services_of
from db.accounts import create_user
from db.models import AuditEvent, Batch, Prediction, ReviewFlag, Study, StudyResult, User, utcnow
from models.film import unpack_film
from studies import intake
from studies.files import expand
from tests.dicom.factory import chest_pixels, dataset, to_bytes
from tests.helpers import StubScreener, bearer, chest_films, csrf, login
from worker import pipeline


def _screen(app, films: dict[str, bytes]) -> list[int]:
    """Upload films as the uploader and screen them with the stub (opacity: PNEUMONIA 0.9, else NORMAL 0.41)."""
    services = services_of(app)
    with services.sessions() as session:
        uploader = session.scalar(select(User.id).where(User.username == "uploader"))
    batch, _ = intake.submit_batch(services, [i for n, d in films.items() for i in expand(n, d)], uploader, "api")
    with services.sessions() as session:
        ids = session.scalars(select(Study.id).where(Study.batch_id == batch.id).order_by(Study.id)).all()
    pipeline.run_batch(services.sessions, services.storage, StubScreener(), ids)
    return ids


def _reader(app, username: str):
    client = app.test_client()
    assert login(client, username, f"{username}-password").status_code == 302
    return client


def _decide(client, study_id: int, decision: str, version: int | None, page: bytes | None = None, **query):
    page = page or client.get(f"/review/{study_id}").data
    form = {"csrf_token": csrf(page), "decision": decision, "note": f"reads {decision}"}
    if version is not None:
        form["version"] = str(version)
    return client.post(f"/review/{study_id}", data=form, query_string=query)


def _flag(app, study_id: int) -> ReviewFlag:
    with services_of(app).sessions() as session:
        flag = session.scalar(select(ReviewFlag).where(ReviewFlag.study_id == study_id))
        list(flag.reviews)  # load before the session closes
        return flag


def test_the_film_comes_at_its_bit_depth_to_readers_only(app, users):
    pixels = chest_pixels(640, 520, bits=12)
    pixels[5, 5] = 4095
    ids = _screen(app, {"cr.dcm": to_bytes(dataset(pixels, WindowCenter=2000, WindowWidth=1500))})
    reader = _reader(app, "reviewer")

    plain = reader.get(f"/review/{ids[0]}/film")
    header, served = unpack_film(plain.data)
    assert plain.status_code == 200 and np.array_equal(served, pixels) and header["bits"] == 12
    assert header["presets"]["default"] == [2000.0, 1500.0]
    packed = reader.get(f"/review/{ids[0]}/film", headers={"Accept-Encoding": "gzip, deflate"})
    assert packed.headers["Content-Encoding"] == "gzip" and gzip.decompress(packed.data) == plain.data
    assert len(packed.data) < len(plain.data) / 2

    uploader = _reader(app, "uploader")
    assert uploader.get(f"/review/{ids[0]}/film").status_code == 403
    with services_of(app).sessions.begin() as session:
        session.get(Study, ids[0]).original_purged_at = utcnow()
    gone = reader.get(f"/review/{ids[0]}/film")
    assert gone.status_code == 404 and b"retention purge" in gone.data
    assert reader.get("/review/999999/film").status_code == 404


def test_any_study_opens_and_a_reader_can_dispute_an_unflagged_call(app, users):
    films = chest_films(normal=1, pneumonia=1)
    normal_id, pneumonia_id = _screen(app, films)
    reader = _reader(app, "reviewer")
    page = reader.get(f"/review/{pneumonia_id}")
    assert page.status_code == 200 and b"Not flagged" in page.data and b'name="version"' in page.data
    assert b">PNEUMONIA<" in page.data and b"Waiting" in page.data

    worklist = reader.get("/review/all").data.decode()
    assert {f'href="/review/{normal_id}"', f'href="/review/{pneumonia_id}"'} <= set(re.findall(r'href="/review/\d+"',
                                                                                                 worklist))
    only = reader.get("/review/all", query_string={"call": "PNEUMONIA"}).data.decode()
    assert f'data-study="{pneumonia_id}"' in only and f'data-study="{normal_id}"' not in only
    flagged = reader.get("/review/all", query_string={"reason": "near_threshold", "decided": "no"}).data.decode()
    assert f'data-study="{normal_id}"' in flagged and f'data-study="{pneumonia_id}"' not in flagged

    response = _decide(reader, pneumonia_id, "normal", 0, page.data)
    assert response.status_code == 302
    flag = _flag(app, pneumonia_id)
    assert flag.reasons == ["reader_request"] and flag.status == "closed"
    assert [review.decision for review in flag.reviews] == ["normal"]
    with services_of(app).sessions() as session:
        result = session.scalar(select(StudyResult).join(Study, Study.study_result_id == StudyResult.id)
                                .where(Study.id == pneumonia_id))
        assert (result.call, result.review_decision) == ("PNEUMONIA", "normal")
        actions = session.scalars(select(AuditEvent.action).where(AuditEvent.object_id == pneumonia_id)).all()
    assert {"study.flag", "review.decision"} <= set(actions)
    decided = reader.get("/review/all", query_string={"decided": "yes"}).data.decode()
    assert f'data-study="{pneumonia_id}"' in decided and f'data-study="{normal_id}"' not in decided
    # A decided case is locked behind "Change decision".
    assert b'id="change-decision"' in reader.get(f"/review/{pneumonia_id}").data


def test_a_stale_decision_is_refused_and_a_disagreement_goes_to_a_third_reader(app, users):
    with services_of(app).sessions.begin() as session:
        create_user(session, "third", "reviewer", "third-password")
    (study_id,) = _screen(app, chest_films(normal=1))
    first, second, third = _reader(app, "reviewer"), _reader(app, "admin"), _reader(app, "third")
    first_page = first.get(f"/review/{study_id}").data  # loaded at version 0
    assert _decide(second, study_id, "normal", 0).status_code == 302

    refused = _decide(first, study_id, "pneumonia", 0, first_page)
    assert refused.status_code == 409
    text = refused.data.decode()
    assert "Not recorded" in text and "admin" in text and "<b>normal</b>" in text
    assert 'name="version" type="hidden" value="1"' in text
    assert [review.decision for review in _flag(app, study_id).reviews] == ["normal"]

    assert _decide(first, study_id, "pneumonia", 1, refused.data).status_code == 302  # a deliberate second read
    flag = _flag(app, study_id)
    assert flag.status == "open" and "third_read" in flag.reasons
    queue = third.get("/review/", query_string={"lane": "third"}).data.decode()
    assert f'href="/review/{study_id}?lane=third"' in queue
    # A reader of the disagreement cannot settle it.
    assert _decide(second, study_id, "normal", 2).status_code == 302
    assert _flag(app, study_id).status == "open"
    assert _decide(third, study_id, "pneumonia", 3, lane="third").status_code == 302
    flag = _flag(app, study_id)
    assert flag.status == "closed" and [r.decision for r in flag.reviews] == ["normal", "pneumonia", "normal",
                                                                             "pneumonia"]
    with services_of(app).sessions() as session:
        assert session.scalar(select(AuditEvent).where(AuditEvent.action == "review.third_read")) is not None


def test_an_opened_case_is_claimed_and_others_skip_it_until_the_claim_expires(app, users):
    ids = _screen(app, chest_films(normal=3))
    first, second = _reader(app, "reviewer"), _reader(app, "admin")
    first.get(f"/review/{ids[1]}")  # claims the middle case
    warned = second.get(f"/review/{ids[1]}").data.decode()
    assert "reviewer opened this case" in warned
    assert "reviewer reading" in second.get("/review/").data.decode()

    token = re.search(r'name="csrf-token" content="([^"]+)"', warned)[1]
    state = second.post(f"/review/{ids[1]}/claim", headers={"X-CSRFToken": token}).get_json()
    assert state == {"version": 0, "status": "open", "held_by": "reviewer", "latest": None}
    assert second.post(f"/review/{ids[1]}/claim").status_code == 400  # no CSRF token: refused

    done = _decide(second, ids[0], "normal", 0)
    assert done.headers["Location"].endswith(f"/review/{ids[2]}")  # skips the case the other reader holds
    # The first reader's page, still open on the decided case, learns of the other read at its next call.
    first_token = re.search(r'name="csrf-token" content="([^"]+)"', first.get(f"/review/{ids[1]}").data.decode())[1]
    state = first.post(f"/review/{ids[0]}/claim", headers={"X-CSRFToken": first_token}).get_json()
    assert state["version"] == 1 and state["latest"]["decision"] == "normal" and state["latest"]["reviewer"] == "admin"
    with services_of(app).sessions.begin() as session:
        flag = session.scalar(select(ReviewFlag).where(ReviewFlag.study_id == ids[1]))
        flag.claimed_until = utcnow() - timedelta(seconds=1)
    done = _decide(second, ids[2], "normal", 0)
    assert done.headers["Location"].endswith(f"/review/{ids[1]}")  # the claim expired
    assert "opened this case" not in second.get(f"/review/{ids[1]}").data.decode()
    assert _flag(app, ids[1]).claimed_by is not None


def _flagged(session, batch_id: int, probability: float, call: str, reasons: list[str], threshold: float = 0.5) -> int:
    study = Study(batch_id=batch_id, filename=f"{call}-{probability}.png", content_sha256="0" * 64,
                  storage_key="originals/00/" + "0" * 64, status="done")
    session.add(study)
    session.flush()
    session.add(Prediction(study_id=study.id, model_name="m", model_version="1", probability=probability,
                           prediction=call, threshold=threshold, crop_box=[0, 0, 1, 1]))
    session.add(ReviewFlag(study_id=study.id, reasons=reasons))
    return study.id


def test_the_queue_ranks_what_matters_lane_by_lane(app, users):
    with services_of(app).sessions.begin() as session:
        uploader = session.scalar(select(User.id).where(User.username == "uploader"))
        batch = Batch(created_by=uploader)
        session.add(batch)
        session.flush()
        made = {
            "qa": _flagged(session, batch.id, 0.20, "NORMAL", ["qa_sample"]),
            "black square": _flagged(session, batch.id, 0.867, "PNEUMONIA", ["out_of_scope"]),
            "far below": _flagged(session, batch.id, 0.30, "NORMAL", ["uncertain"]),
            "close below": _flagged(session, batch.id, 0.45, "NORMAL", ["near_threshold"]),
            "high but far": _flagged(session, batch.id, 0.49, "NORMAL", ["near_threshold"], threshold=0.6),
            "confirm": _flagged(session, batch.id, 0.55, "PNEUMONIA", ["uncertain"]),
            "third": _flagged(session, batch.id, 0.40, "NORMAL", ["near_threshold", "third_read"]),
        }
    name = {study_id: key for key, study_id in made.items()}
    api = app.test_client()
    body = api.get("/api/v1/review", headers=bearer(users["reviewer"])).get_json()
    assert [name[item["study_id"]] for item in body["items"]] == [
        "third", "close below", "high but far", "far below", "confirm", "black square", "qa"]
    assert body["counts"] == {"third": 1, "missed": 3, "confirm": 1, "scope": 1, "qa": 1}
    missed = api.get("/api/v1/review?lane=missed", headers=bearer(users["reviewer"])).get_json()
    assert [name[item["study_id"]] for item in missed["items"]] == ["close below", "high but far", "far below"]
    assert api.get("/api/v1/review?lane=nope", headers=bearer(users["reviewer"])).status_code == 400

    reader = _reader(app, "reviewer")
    page = reader.get("/review/", query_string={"lane": "missed"}).data.decode()
    order = [int(i) for i in re.findall(r'href="/review/(\d+)\?lane=missed"', page)]
    assert [name[i] for i in order] == ["close below", "high but far", "far below"]
    assert re.search(r'Review queue <span class="count"[^>]*>7</span>', page)  # counts in the navigation
    assert "no confident call" in reader.get("/review/", query_string={"lane": "scope"}).data.decode()


def test_the_api_refuses_a_stale_expected_version(app, users):
    (study_id,) = _screen(app, chest_films(normal=1))
    client = app.test_client()
    url = f"/api/v1/studies/{study_id}/review"
    first = client.post(url, json={"decision": "normal", "expected_version": 0}, headers=bearer(users["reviewer"]))
    assert first.status_code == 201 and first.get_json()["version"] == 1
    stale = client.post(url, json={"decision": "pneumonia", "expected_version": 0}, headers=bearer(users["admin"]))
    assert stale.status_code == 409
    assert stale.get_json()["latest"]["decision"] == "normal" and stale.get_json()["version"] == 1
    bad = client.post(url, json={"decision": "normal", "expected_version": "1"}, headers=bearer(users["admin"]))
    assert bad.status_code == 400
    other = client.post(url, json={"decision": "pneumonia", "expected_version": 1}, headers=bearer(users["admin"]))
    assert other.status_code == 201 and other.get_json()["review_status"] == "open"
    assert "third_read" in other.get_json()["flag_reasons"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_queue_counts_are_not_shown_to_uploaders(app, users):
    _screen(app, chest_films(normal=1))
    uploader = _reader(app, "uploader")
    assert 'class="count"' not in uploader.get("/batches").data.decode()
    assert 'Review queue <span class="count" title="open cases">1</span>' in _reader(app, "reviewer").get(
        "/batches").data.decode()
