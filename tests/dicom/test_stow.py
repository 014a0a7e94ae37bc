"""STOW-RS: multipart/related DICOM in, a PS3.18 store response out; bearer auth; both databases."""
import uuid

from sqlalchemy import select

from core.services import services_of
from db.models import Study
from tests.dicom.factory import chest_pixels, dataset, j2k, to_bytes
from tests.helpers import bearer

REFERENCED, FAILED, FAILURE_REASON = "00081199", "00081198", "00081197"
SOP_INSTANCE = "00081155"


def _multipart(parts: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"
                    for kind, data in parts)
    return body + f"--{boundary}--\r\n".encode(), f'multipart/related; type="application/dicom"; boundary={boundary}'


def _post(client, token, parts):
    body, content_type = _multipart(parts)
    return client.post("/dicomweb/studies", data=body, headers={**bearer(token), "Content-Type": content_type})


def _uids(sequence: dict) -> list[str]:
    return [item[SOP_INSTANCE]["Value"][0] for item in sequence["Value"] if SOP_INSTANCE in item]


def test_stow_stores_good_instances_and_fails_bad_ones(app, users):
    client = app.test_client()
    good = [dataset(chest_pixels(), study_uid="1.2.3.9"), j2k(dataset(chest_pixels(), study_uid="1.2.3.9"))]
    tiny = dataset(chest_pixels(20, 20))  # refused: too small (colour objects are accepted and ignored)
    response = _post(client, users["uploader"], [("application/dicom", to_bytes(ds)) for ds in good]
                     + [("application/dicom", to_bytes(tiny)), ("application/dicom", b"not dicom at all"),
                        ("text/plain", b"hello")])
    assert response.status_code == 202 and response.mimetype == "application/dicom+json"
    body = response.get_json()
    assert _uids(body[REFERENCED]) == [ds.SOPInstanceUID for ds in good]
    failed = body[FAILED]["Value"]
    assert len(failed) == 3 and _uids(body[FAILED]) == [tiny.SOPInstanceUID]
    assert all(item[FAILURE_REASON]["vr"] == "US" and item[FAILURE_REASON]["Value"][0] in (0xA900, 0xC000)
               for item in failed)
    batch = client.get(response.headers["Content-Location"], headers=bearer(users["uploader"])).get_json()
    assert batch["total"] == 2
    with services_of(app).sessions() as session:
        rows = session.scalars(select(Study)).all()
        assert {row.sop_instance_uid for row in rows} == {ds.SOPInstanceUID for ds in good}
        assert {row.study_instance_uid for row in rows} == {"1.2.3.9"}


def test_stow_all_good_all_bad_auth_and_media_type(app, users):
    client = app.test_client()
    assert _post(client, users["uploader"], [("application/dicom", to_bytes(dataset(chest_pixels())))]).status_code == 200
    response = _post(client, users["uploader"], [("application/dicom", b"junk")])
    assert response.status_code == 409 and REFERENCED not in response.get_json()
    assert _post(client, "psk_wrong", [("application/dicom", b"x")]).status_code == 401
    assert client.post("/dicomweb/studies", data=b"x").status_code == 401
    assert _post(client, users["reviewer"], [("application/dicom", b"x")]).status_code == 403
    wrong = client.post("/dicomweb/studies", data=b"x", headers={**bearer(users["uploader"]), "Content-Type": "application/json"})
    assert wrong.status_code == 415


def test_stow_refuses_a_jpeg_or_zip_labelled_dicom(app, users):
    from tests.helpers import chest_film, zip_bytes

    client = app.test_client()
    response = _post(client, users["uploader"], [("application/dicom", chest_film(0)),
                                                 ("application/dicom", zip_bytes({"a.dcm": to_bytes(dataset(
                                                     chest_pixels()))}))])
    assert response.status_code == 409
    failed = response.get_json()[FAILED]["Value"]
    assert len(failed) == 2 and all(item[FAILURE_REASON]["Value"][0] == 0xC000 for item in failed)
    with services_of(app).sessions() as session:
        assert session.scalars(select(Study)).all() == []
