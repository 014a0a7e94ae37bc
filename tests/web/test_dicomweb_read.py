"""QIDO-RS and WADO-RS through dicomweb-client against the served app: search, retrieve, metadata, frames,
rendered pictures, department isolation; both databases."""
import dataclasses
import io
import json

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image
from pydicom.uid import generate_uid
from sqlalchemy import select

from core.services import services_of
from db.accounts import create_user, ensure_department, issue_token
from db.models import Study, User
from models.dicom import read_dataset
from studies.files import expand
from studies.intake import submit_batch
from tests.dicom.factory import chest_pixels, dataset, to_bytes
from tests.helpers import bearer, chest_film, data_dir
from tests.web.dicomweb_helpers import dicomweb, parts, served, stow

ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
REQUIRED_STUDY_TAGS = {"0020000D", "00080020", "00080030", "00080050", "00080056", "00080061", "00080090",
                       "00100010", "00100020", "00100030", "00100040", "00200010", "00201206", "00201208", "00081190"}


def _value(attributes: dict, tag: str):
    return attributes[tag].get("Value", [None])[0]


def _uids(found: list[dict], tag: str = "0020000D") -> set[str]:
    return {_value(item, tag) for item in found}


def test_real_films_round_trip_through_a_dicomweb_client(app, users):
    folder = data_dir("dicom")
    j2k_bytes, bare_bytes = (folder / "RG1_J2KI.dcm").read_bytes(), (folder / "CR-MONO1-10-chest.dcm").read_bytes()
    j2k, bare = read_dataset(j2k_bytes), read_dataset(bare_bytes)
    with served(app) as base:
        assert stow(base, users["uploader"], [j2k_bytes, bare_bytes]).status_code == 200
        client = dicomweb(base, users["uploader"])
        studies = client.search_for_studies()
        assert _uids(studies) == {j2k.StudyInstanceUID, bare.StudyInstanceUID}
        assert all(REQUIRED_STUDY_TAGS <= set(study) for study in studies)
        ours = next(study for study in studies if _value(study, "0020000D") == j2k.StudyInstanceUID)
        assert _value(ours, "00080061") == "CR" and _value(ours, "00201208") == 1
        assert _value(ours, "00080020") == "20040826" and _value(ours, "00081190").endswith(
            f"/dicomweb/studies/{j2k.StudyInstanceUID}")
        assert "Value" not in ours["00100010"]  # no patient name kept in the index

        # What goes out is the stored original, byte for byte (stored de-identified by default).
        path = f"{base}/studies/{j2k.StudyInstanceUID}/series/{j2k.SeriesInstanceUID}/instances/{j2k.SOPInstanceUID}"
        response = requests.get(path, headers={**bearer(users["uploader"]), "Accept": ANY_SYNTAX}, timeout=60)
        [(kind, body)] = parts(response)
        assert body == _stored(app, j2k.SOPInstanceUID)
        assert kind == "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.91"
        assert pydicom.dcmread(io.BytesIO(body)).PatientName == ""
        [retrieved] = client.retrieve_study(bare.StudyInstanceUID)
        assert np.array_equal(retrieved.pixel_array, bare.pixel_array)

        metadata = client.retrieve_instance_metadata(j2k.StudyInstanceUID, j2k.SeriesInstanceUID,
                                                       j2k.SOPInstanceUID)
        for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                        "PhotometricInterpretation", "SamplesPerPixel", "PixelSpacing", "WindowCenter",
                        "WindowWidth", "SOPClassUID", "InstanceNumber", "Modality"):
            assert pydicom.datadict.tag_for_keyword(keyword) is not None
            assert f"{pydicom.datadict.tag_for_keyword(keyword):08X}" in metadata, keyword
        assert _value(metadata, "00280004") == "MONOCHROME1" and _value(metadata, "00280010") == 1955
        assert metadata["7FE00010"]["BulkDataURI"].endswith(f"/instances/{j2k.SOPInstanceUID}/frames/1")
        assert "InlineBinary" not in json.dumps(metadata)
        assert len(client.retrieve_series_metadata(j2k.StudyInstanceUID, j2k.SeriesInstanceUID)) == 1

        [frame] = client.retrieve_instance_frames(j2k.StudyInstanceUID, j2k.SeriesInstanceUID,
                                                  j2k.SOPInstanceUID, [1])
        assert frame == j2k.pixel_array.astype("<u2").tobytes()
        png = client.retrieve_instance_rendered(j2k.StudyInstanceUID, j2k.SeriesInstanceUID, j2k.SOPInstanceUID,
                                                media_types=("image/png",))
        assert Image.open(io.BytesIO(png)).size == (1841, 1955)
        jpeg = client.retrieve_instance_frames_rendered(bare.StudyInstanceUID, bare.SeriesInstanceUID,
                                                        bare.SOPInstanceUID, [1])
        picture = np.asarray(Image.open(io.BytesIO(jpeg)))
        assert picture.shape == (440, 440) and picture.std() > 10  # a film, not a blank square


def _stored(app, sop_instance_uid: str) -> bytes:
    services = services_of(app)
    with services.sessions() as session:
        key = session.scalar(select(Study.storage_key).where(Study.sop_instance_uid == sop_instance_uid))
    return services.storage.get(key)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_films_stored_as_received_round_trip_byte_for_byte(settings, users_of):
    from pneumoscreen.app import create_app

    app = create_app(settings=dataclasses.replace(settings, deidentify=False))
    tokens = users_of(app)
    folder = data_dir("dicom")
    j2k_bytes, bare_bytes = (folder / "RG1_J2KI.dcm").read_bytes(), (folder / "CR-MONO1-10-chest.dcm").read_bytes()
    j2k, bare = read_dataset(j2k_bytes), read_dataset(bare_bytes)
    try:
        with served(app) as base:
            assert stow(base, tokens["uploader"], [j2k_bytes, bare_bytes]).status_code == 200
            headers = {**bearer(tokens["uploader"]), "Accept": ANY_SYNTAX}
            [(_, body)] = parts(requests.get(f"{base}/studies/{j2k.StudyInstanceUID}", headers=headers, timeout=60))
            assert body == j2k_bytes
            # A bare data set (no preamble, no file meta) goes out as a Part 10 file around the same bytes.
            [(kind, body)] = parts(requests.get(f"{base}/studies/{bare.StudyInstanceUID}", headers=headers,
                                                timeout=60))
            assert kind.endswith("transfer-syntax=1.2.840.10008.1.2") and body[128:132] == b"DICM"
            assert body.endswith(bare_bytes) and pydicom.dcmread(io.BytesIO(body)).PatientName == bare.PatientName
    finally:
        services_of(app).engine.dispose()


@pytest.fixture
def users_of():
    """Make one user per role in any app; returns role -> API token."""
    def make(app) -> dict[str, str]:
        with services_of(app).sessions.begin() as session:
            return {role: issue_token(session, create_user(session, role, role, f"{role}-password"))
                    for role in ("uploader", "reviewer", "admin")}
    return make


def _film(study: str, **attributes) -> bytes:
    return to_bytes(dataset(chest_pixels(), study_uid=study, **attributes))


def test_search_matching_paging_and_fields(app, users):
    a, b, c = (generate_uid() for _ in range(3))
    films = [_film(a, AccessionNumber="ACC-100", StudyDate="20240105", InstanceNumber=1, PatientAge="004Y"),
             _film(a, AccessionNumber="ACC-100", StudyDate="20240105", modality="DX", InstanceNumber=2),
             _film(b, AccessionNumber="ACC-200", StudyDate="20240210", modality="DX"),
             _film(c, AccessionNumber="XYZ", StudyDate="20231231")]
    services = services_of(app)
    with services.sessions() as session:  # a PNG upload has no DICOM original: never listed
        user_id = session.scalar(select(User.id).where(User.username == "uploader"))
    submit_batch(services, list(expand("film.png", chest_film(3, fmt="PNG"))), user_id, "api")
    with served(app) as base:
        assert stow(base, users["uploader"], films).status_code == 200
        client = dicomweb(base, users["uploader"])

        def found(**filters) -> set[str]:
            return _uids(client.search_for_studies(search_filters=filters))

        assert found() == {a, b, c}
        assert found(StudyInstanceUID=f"{a},{b}") == {a, b} and found(StudyInstanceUID=[a, c]) == {a, c}
        assert found(AccessionNumber="ACC-100") == {a} and found(AccessionNumber="ACC*") == {a, b}
        assert found(AccessionNumber="ACC-?00") == {a, b} and found(AccessionNumber="ACC%") == set()
        assert found(StudyDate="20240101-20240131") == {a} and found(StudyDate="20240101-") == {a, b}
        assert found(StudyDate="-20231231") == {c} and found(StudyDate="20240210") == {b}
        assert found(ModalitiesInStudy="DX") == {a, b} and found(ModalitiesInStudy="MR") == set()
        assert found(PatientName="SMITH^JOHN") == set() and found(PatientName="*") == {a, b, c}
        assert found(ModalitiesInStudy="*") == {a, b, c} and found(AccessionNumber="*") == {a, b, c}
        assert found(**{"00080050": "XYZ"}) == {c}  # a tag works as well as a keyword

        [study] = client.search_for_studies(search_filters={"StudyInstanceUID": a}, fields=["PatientAge"])
        assert study["00080061"]["Value"] == ["CR", "DX"] and _value(study, "00201206") == 2
        assert _value(study, "00201208") == 2 and _value(study, "00101010") == "004Y"
        pages = [client.search_for_studies(limit=1, offset=offset) for offset in range(4)]
        assert [len(page) for page in pages] == [1, 1, 1, 0]
        assert set().union(*(_uids(page) for page in pages)) == {a, b, c}

        series = client.search_for_series(a)
        assert sorted(_value(item, "00080060") for item in series) == ["CR", "DX"]
        assert all(_value(item, "00201209") == 1 and "00081190" in item for item in series)
        assert {_value(item, "0020000E") for item in client.search_for_series(a, search_filters={
            "Modality": "DX"})} == {pydicom.dcmread(io.BytesIO(films[1])).SeriesInstanceUID}
        instances = client.search_for_instances(a)
        assert sorted(_value(item, "00200013") for item in instances) == [1, 2]
        assert all(_value(item, "00280010") == 96 and _value(item, "00280011") == 80 for item in instances)
        first = pydicom.dcmread(io.BytesIO(films[0]))
        only = client.search_for_instances(a, first.SeriesInstanceUID, fields=["WindowCenter", "PatientAge"])
        assert _uids(only, "00080018") == {first.SOPInstanceUID} and _value(only[0], "00101010") == "004Y"

        headers = bearer(users["uploader"])
        nothing = requests.get(f"{base}/studies", params={"AccessionNumber": "NONE"}, headers=headers, timeout=30)
        assert nothing.status_code == 200 and nothing.json() == []  # zero matches: 200, empty array (CP-2473)
        ignored = requests.get(f"{base}/studies", params={"BodyPartExamined": "CHEST"}, headers=headers, timeout=30)
        assert ignored.status_code == 200 and "BodyPartExamined" in ignored.headers["Warning"]
        as_json = requests.get(f"{base}/studies", headers={**headers, "Accept": "application/json"}, timeout=30)
        assert as_json.headers["Content-Type"].startswith("application/json") and len(as_json.json()) == 3


def test_departments_see_only_their_own_images_of_a_shared_study_uid(app, users):
    services, shared = services_of(app), generate_uid()
    with services.sessions.begin() as session:
        tokens = {name: issue_token(session, create_user(session, f"up-{name}", "uploader", None,
                                                         department_id=ensure_department(session, f"Ward {name}").id))
                  for name in ("A", "B")}
    ours, theirs = _film(shared, InstanceNumber=1), _film(shared, InstanceNumber=2)
    ours_ds, theirs_ds = (pydicom.dcmread(io.BytesIO(data)) for data in (ours, theirs))
    with served(app) as base:
        assert stow(base, tokens["A"], [ours]).status_code == 200
        assert stow(base, tokens["A"], [ours]).status_code == 200  # sent twice: still one instance
        assert stow(base, tokens["B"], [theirs]).status_code == 200
        client = dicomweb(base, tokens["A"])
        [study] = client.search_for_studies(search_filters={"StudyInstanceUID": shared})
        assert _value(study, "00201208") == 1 and _value(study, "00201206") == 1
        assert _uids(client.search_for_instances(shared), "00080018") == {ours_ds.SOPInstanceUID}
        assert _uids(client.search_for_series(shared), "0020000E") == {ours_ds.SeriesInstanceUID}
        assert client.search_for_instances(shared, theirs_ds.SeriesInstanceUID) == []
        assert [ds.SOPInstanceUID for ds in client.retrieve_study(shared)] == [ours_ds.SOPInstanceUID]
        assert {_value(item, "00080018") for item in client.retrieve_study_metadata(shared)} == {
            ours_ds.SOPInstanceUID}
        for suffix in ("", "/metadata", "/frames/1", "/rendered"):
            url = (f"{base}/studies/{shared}/series/{theirs_ds.SeriesInstanceUID}/instances/"
                   f"{theirs_ds.SOPInstanceUID}{suffix}")
            assert requests.get(url, headers=bearer(tokens["A"]), timeout=30).status_code == 404, suffix
        assert requests.get(url, headers=bearer(tokens["B"]), timeout=30).status_code == 200
        assert dicomweb(base, tokens["B"]).search_for_instances(shared)[0]["00080018"]["Value"] == [
            theirs_ds.SOPInstanceUID]
        # Reviewers read every department (web.queries' rule): the study shows both images.
        [both] = dicomweb(base, users["reviewer"]).search_for_studies(search_filters={"StudyInstanceUID": shared})
        assert _value(both, "00201208") == 2
        assert dicomweb(base, users["uploader"]).search_for_studies() == []  # no department, not theirs


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_hostile_ids_bad_queries_and_auth(app, users):
    client, headers = app.test_client(), bearer(users["admin"])
    uid = generate_uid()
    assert client.get("/dicomweb/studies").status_code == 401
    assert client.get("/dicomweb/studies").headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/dicomweb/studies", headers=bearer("psk_wrong")).status_code == 401
    for path in ("/dicomweb/studies/1.2.x", f"/dicomweb/studies/{'1' * 65}", f"/dicomweb/studies/{uid}/series/a",
                 f"/dicomweb/studies/{uid}/series/1.2/instances/1.2;drop", f"/dicomweb/studies/{uid}/series/1.2%00",
                 "/dicomweb/studies/1.2'or'1/metadata"):
        response = client.get(path, headers=headers)
        assert response.status_code == 400 and "digits and dots" in response.get_json()["error"], path
    for query in ("StudyInstanceUID=abc", "StudyInstanceUID=1.2,x", "StudyDate=2024", "StudyDate=20241301",
                  "StudyDate=-", "StudyDate=20240101-20240102,20240105", "limit=0", "limit=x", "offset=-1", "limit=²",
                  "foo=bar", "includefield=nope", "ModalitiesInStudy=<script>", "AccessionNumber=" + "A" * 17):
        response = client.get(f"/dicomweb/studies?{query}", headers=headers)
        assert response.status_code == 400 and response.get_json()["error"], query
    assert client.get(f"/dicomweb/studies/{uid}/series/%2e%2e", headers=headers).status_code in (400, 404)
    assert client.get(f"/dicomweb/studies/{uid}", headers=headers).status_code == 404
    assert client.get(f"/dicomweb/studies/{uid}/series", headers=headers).get_json() == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_content_negotiation(app, users):
    from tests.dicom.factory import j2k

    ds = j2k(dataset(chest_pixels()))
    client, headers = app.test_client(), bearer(users["uploader"])
    with served(app) as base:
        assert stow(base, users["uploader"], [to_bytes(ds)]).status_code == 200
    instance = f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"

    def status(path: str, accept: str) -> int:
        return client.get(path, headers={**headers, "Accept": accept}).status_code

    assert status("/dicomweb/studies", "application/dicom+xml") == 406
    assert status("/dicomweb/studies", 'multipart/related; type="application/dicom+xml"') == 406
    assert status("/dicomweb/studies", "application/dicom+json;q=0, */*;q=0.1") == 200
    answer = client.get("/dicomweb/studies", headers={**headers, "Accept": "application/dicom+json;q=0, */*"})
    assert answer.mimetype == "application/json"
    assert client.get("/dicomweb/studies", headers={**headers, "Accept": "text/html, */*;q=0.2"}).mimetype == \
        "application/dicom+json"
    assert status("/dicomweb/studies", "nonsense") == 400
    # Stored JPEG 2000 lossless: no transcoding, so explicit VR little endian cannot be had.
    refused = client.get(instance, headers={**headers, "Accept": 'multipart/related; type="application/dicom"; '
                                                                 "transfer-syntax=1.2.840.10008.1.2.1"})
    assert refused.status_code == 406 and "1.2.840.10008.1.2.4.90" in refused.get_json()["error"]
    for accept in ('multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90',
                   'multipart/related; type="application/dicom"', "*/*",
                   'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1, '
                   'multipart/related; type="application/dicom"; transfer-syntax=*;q=0.5'):
        assert status(instance, accept) == 200, accept
    assert status(instance, "application/dicom+json") == 406
    assert status(instance, 'multipart/related; type="application/dicom"; q=0') == 406
    frames = instance + "/frames/1"
    assert status(frames, 'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.90') == 406
    assert status(frames, 'multipart/related; type="application/octet-stream"; transfer-syntax=*') == 200
    assert status(frames, "*/*") == 200 and status(instance + "/frames/2", "*/*") == 404
    assert status(instance + "/frames/0", "*/*") == 400 and status(instance + "/frames/1,x", "*/*") == 400
    rendered = instance + "/rendered"
    assert status(rendered, "image/gif") == 406
    assert client.get(rendered, headers=headers).mimetype == "image/jpeg"
    assert client.get(rendered, headers={**headers, "Accept": "image/png;q=0.5, image/jpeg;q=0.9"}).mimetype == \
        "image/jpeg"
    assert client.get(rendered, headers={**headers, "Accept": "image/jpeg;q=0, image/*"}).mimetype == "image/png"
    assert client.get(rendered + "?quality=0", headers=headers).status_code == 400
    metadata = client.get(instance + "/metadata", headers={**headers, "Accept": "application/json"})
    assert metadata.status_code == 200 and metadata.mimetype == "application/json"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_portal_session_reads_too(app, users):
    from tests.helpers import login

    ds = dataset(chest_pixels())
    with served(app) as base:
        assert stow(base, users["admin"], [to_bytes(ds)]).status_code == 200
    browser = app.test_client()
    assert browser.get("/dicomweb/studies").status_code == 401
    login(browser, "reviewer", "reviewer-password")
    found = browser.get("/dicomweb/studies").get_json()
    assert _uids(found) == {ds.StudyInstanceUID}
