"""The same file uploaded twice: recognised by content hash, screened once, both uploads answered."""
import io

from sqlalchemy import select

from core.services import services_of
from db.models import Study
from tests.helpers import bearer
from tests.security.corpus import encode, film
from worker import pipeline


class CountingScreener:
    """The real screener, counting the images it is asked to read."""

    def __init__(self, screener):
        self.screener, self.images = screener, 0

    def __getattr__(self, name):
        return getattr(self.screener, name)

    def screen(self, images, points=None):
        self.images += len(images)
        return self.screener.screen(images, points)


def _upload(client, token, files: dict[str, bytes]) -> int:
    response = client.post("/api/v1/batches", headers=bearer(token), content_type="multipart/form-data",
                           data={"files": [(io.BytesIO(data), name) for name, data in files.items()]})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def test_same_file_twice_is_screened_once_and_both_answered(app, users):
    services, client = services_of(app), app.test_client()
    screener = CountingScreener(pipeline.load_screener(services.settings))
    first, other = encode(film(seed=11), "PNG"), encode(film(seed=12), "PNG")

    batch_one = _upload(client, users["uploader"], {"a.png": first, "b.png": other, "a-again.png": first})
    with services.sessions() as session:
        pending = session.scalars(select(Study.id).where(Study.duplicate_of_id.is_(None))).all()
    pipeline.run_batch(services.sessions, services.storage, screener, list(pending))
    batch_two = _upload(client, users["admin"], {"copy-of-a.png": first})

    assert screener.images == 2  # a.png and b.png; neither copy was read again
    one = client.get(f"/api/v1/batches/{batch_one}", headers=bearer(users["uploader"])).get_json()
    two = client.get(f"/api/v1/batches/{batch_two}", headers=bearer(users["admin"])).get_json()
    assert one["status"] == "done" and two["status"] == "done", (one, two)
    studies = {s["filename"]: s for s in one["studies"] + two["studies"]}
    for copy in ("a-again.png", "copy-of-a.png"):
        assert studies[copy]["status"] == "done"
        assert studies[copy]["probability"] == studies["a.png"]["probability"]
        assert studies[copy]["flagged"] == studies["a.png"]["flagged"]
        thumb = client.get(f"/studies/{studies[copy]['id']}/thumb.png", headers=bearer(users["admin"]))
        assert thumb.status_code == 200 and thumb.data[:4] == b"\x89PNG"
    with services.sessions() as session:
        copies = session.scalars(select(Study).where(Study.duplicate_of_id.is_not(None))).all()
        assert {s.duplicate_of_id for s in copies} == {studies["a.png"]["id"]} and len(copies) == 2
        assert all(s.prediction.details["duplicate_of"] == studies["a.png"]["id"] for s in copies)


def test_a_copy_waiting_on_its_original_ends_with_it(app, users):
    """Uploaded while the first copy is still queued: answered when the first one is screened."""
    services, client = services_of(app), app.test_client()
    data = encode(film(seed=13), "PNG")
    first = _upload(client, users["uploader"], {"x.png": data})
    second = _upload(client, users["uploader"], {"x-again.png": data})
    assert client.get(f"/api/v1/batches/{second}", headers=bearer(users["uploader"])).get_json()["status"] == "queued"
    with services.sessions() as session:
        original = session.scalar(select(Study.id).where(Study.batch_id == first))
    pipeline.run_batch(services.sessions, services.storage,
                       pipeline.load_screener(services.settings), [original])
    answered = client.get(f"/api/v1/batches/{second}", headers=bearer(users["uploader"])).get_json()
    assert answered["status"] == "done" and answered["studies"][0]["probability"] is not None
