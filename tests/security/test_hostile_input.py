"""Hostile and broken uploads: each bad file is refused with a reason, the rest of its batch goes on."""
import io

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from core.services import services_of
from db.models import Study
from models.imaging import decode_image
from studies import files as inputs
from studies.files import expand
from tests.helpers import bearer
from tests.security.corpus import bad_at_the_door, bad_inside, encode, film, good
from worker import pipeline

BAD = bad_at_the_door()


@pytest.mark.parametrize("name,data,reason", BAD, ids=[case[0] for case in BAD])
def test_each_bad_file_is_refused_with_its_reason(name, data, reason):
    items = list(expand(name, data))
    assert items, "a refused upload must still be answered"
    for item in items:
        assert item.error and reason in item.error, (item.name, item.error)


def test_awkward_but_valid_films_decode_correctly():
    films = good()
    for name, data in films.items():
        pixels = decode_image(data)
        assert pixels.dtype == np.float32 and pixels.ndim == 2 and 0 <= pixels.min() <= pixels.max() <= 1, name
    reference = decode_image(films["gray.png"])
    # EXIF orientation 6 is applied: the stored top (dark end of the ramp) is displayed on the right.
    rotated = decode_image(films["rotated.jpeg"])
    assert rotated.shape == reference.shape[::-1]
    assert rotated[:, -4:].mean() < rotated[:, :4].mean()
    for name in ("cmyk.jpeg", "rgb.jpeg", "palette.png", "la.png", "rgba.png"):
        assert abs(decode_image(films[name]).mean() - reference.mean()) < 0.03, name
    sixteen = decode_image(films["gray16.png"])  # stretched to its own range
    assert sixteen.min() == 0.0 and sixteen.max() == 1.0
    half = np.asarray(film(), np.uint8).copy()
    rgba = np.dstack([half] * 3 + [np.where(np.arange(48) < 24, 0, 255).astype(np.uint8)[None].repeat(64, 0)])
    decoded = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert decoded[:, :24].max() == 0.0 and decoded[:, 24:].mean() > 0.2  # transparent is black


def test_oversize_file_is_refused_and_the_rest_goes_on(monkeypatch):
    monkeypatch.setattr(inputs, "MAX_FILE_BYTES", 1000)
    big = encode(film(200, 200, seed=3), "PNG")
    assert len(big) > 1000
    [item] = expand("big.png", big)
    assert "per-file limit" in item.error
    assert [i.error for i in expand("small.png", b"x" * 10)] == ["not a PNG, JPEG or DICOM image"]


def test_request_over_the_limit_answers_413_with_a_message(app, users):
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    response = app.test_client().post(
        "/api/v1/batches", headers=bearer(users["uploader"]), content_type="multipart/form-data",
        data={"files": [(io.BytesIO(bytes(100 * 1024)), "huge.png")]})
    assert response.status_code == 413 and "upload limit" in response.get_json()["error"]
    assert app.test_client().get("/healthz").status_code == 200


def test_whole_corpus_in_one_upload(app, users, capsys):
    """Every bad case named with its reason, every good film screened, the server still up."""
    services = services_of(app)
    client = app.test_client()
    hostile_name = "..\\../etc/passwd\x00<script>alert(1)</script>.png"
    films = good() | {hostile_name: encode(film(seed=7), "PNG")}
    inside = bad_inside()
    uploads = [(name, data) for name, data, _ in BAD + inside] + list(films.items())
    response = client.post("/api/v1/batches", headers=bearer(users["uploader"]),
                           content_type="multipart/form-data",
                           data={"files": [(io.BytesIO(data), name) for name, data in uploads]})

    assert response.status_code == 202, response.get_json()
    body = response.get_json()
    reasons = {}
    for rejected in body["rejected"]:
        reasons.setdefault(rejected["filename"].split("/")[0], []).append(rejected["error"])
    for name, _, reason in BAD:
        assert name in reasons and all(reason in error for error in reasons[name]), (name, reasons.get(name))
    assert body["total"] == len(films) + len(inside)

    with services.sessions() as session:
        ids = session.scalars(select(Study.id).where(Study.batch_id == body["id"])).all()
    pipeline.run_batch(services.sessions, services.storage,
                       pipeline.load_screener(services.settings), list(ids))
    batch = client.get(f"/api/v1/batches/{body['id']}", headers=bearer(users["uploader"])).get_json()
    by_name = {study["filename"]: study for study in batch["studies"]}
    for name, _, reason in inside:
        assert by_name[name]["status"] == "error" and reason in by_name[name]["error"]
    stored_hostile = next(n for n in by_name if n.endswith("</script>.png"))
    assert "\x00" not in stored_hostile
    assert all(by_name[n]["status"] == "done" for n in by_name if n not in dict((c[0], 1) for c in inside)), batch
    page = client.get(f"/batches/{body['id']}", headers=bearer(users["uploader"]))
    assert page.status_code == 200 and b"<script>alert(1)" not in page.data
    with services.sessions() as session:
        keys = session.scalars(select(Study.storage_key).where(Study.batch_id == body["id"])).all()
    assert all(key.startswith("originals/") and "passwd" not in key for key in keys)
    assert client.get("/healthz").status_code == 200
    with capsys.disabled():
        print(f"\n[hostile input] {len(BAD) + len(inside) + 2} bad cases tried, all refused with a reason "
              f"({len(BAD)} at the door, {len(inside)} at decode, 2 size limits); {len(films)} awkward films screened")
