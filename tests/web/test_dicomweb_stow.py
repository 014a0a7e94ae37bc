"""STOW-RS into a given study, metadata-and-bulk-data bodies, per-instance statuses from the door; both databases."""
import uuid

import pytest
import requests
from pydicom.uid import generate_uid
from sqlalchemy import select

from core.services import services_of
from db import counters
from db.models import Study
from tests.dicom.factory import chest_pixels, dataset, to_bytes
from tests.helpers import bearer
from tests.web.dicomweb_helpers import dicomweb, served, stow

REFERENCED, FAILED, FAILURE_REASON, RETRIEVE_URL = "00081199", "00081198", "00081197", "00081190"
SOP_INSTANCE = "00081155"


def _stored_uids(app) -> set[str]:
    with services_of(app).sessions() as session:
        return set(session.scalars(select(Study.sop_instance_uid)))


def _failures(body: dict) -> dict[str, int]:
    return {item[SOP_INSTANCE]["Value"][0]: item[FAILURE_REASON]["Value"][0] for item in body[FAILED]["Value"]}


def test_stow_into_a_study_fails_instances_of_another_study(app, users):
    target, other = generate_uid(), generate_uid()
    ours, stray = dataset(chest_pixels(), study_uid=target), dataset(chest_pixels(), study_uid=other)
    with served(app) as base:
        client = dicomweb(base, users["uploader"])
        response = stow(base, users["uploader"], [to_bytes(ours), to_bytes(stray)], study=target)
        assert response.status_code == 202  # some stored, some failed
        body = response.json()
        assert [item[SOP_INSTANCE]["Value"][0] for item in body[REFERENCED]["Value"]] == [ours.SOPInstanceUID]
        assert body[REFERENCED]["Value"][0][RETRIEVE_URL]["Value"][0].endswith(
            f"/studies/{target}/series/{ours.SeriesInstanceUID}/instances/{ours.SOPInstanceUID}")
        assert body[RETRIEVE_URL]["Value"][0].endswith(f"/dicomweb/studies/{target}")
        assert _failures(body) == {stray.SOPInstanceUID: 0xA900}
        assert _stored_uids(app) == {ours.SOPInstanceUID}
        # dicomweb-client posting into the study: all of another study -> 409, nothing stored.
        with pytest.raises(requests.HTTPError) as refused:
            client.store_instances([dataset(chest_pixels(), study_uid=other)], study_instance_uid=target)
        assert refused.value.response.status_code == 409
        again = dataset(chest_pixels(), study_uid=target)
        answer = client.store_instances([again], study_instance_uid=target)
        assert answer.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == again.SOPInstanceUID
        assert _stored_uids(app) == {ours.SOPInstanceUID, again.SOPInstanceUID}
        assert len(client.search_for_instances(target)) == 2


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_metadata_and_bulk_data_bodies_and_bad_study_uids_are_refused(app, users):
    client = app.test_client()
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Type: application/dicom+json\r\n\r\n[{{"00080018": {{"vr": "UI", "Value": '
            f'["1.2.3"]}}}}]\r\n--{boundary}--\r\n').encode()
    for path in ("/dicomweb/studies", "/dicomweb/studies/1.2.3"):
        response = client.post(path, data=body, headers={
            **bearer(users["uploader"]),
            "Content-Type": f'multipart/related; type="application/dicom+json"; boundary={boundary}'})
        assert response.status_code == 415 and "metadata" in response.get_json()["error"]
    bad = client.post("/dicomweb/studies/1.2.abc", data=b"x", headers={
        **bearer(users["uploader"]), "Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert bad.status_code == 400
    assert client.post("/dicomweb/studies/1.2.3", data=b"x").status_code == 401
    assert _stored_uids(app) == set()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_doors_dicom_status_is_the_failure_reason_and_ignored_instances_succeed(app, users):
    """studies.files.expand decides at the door: its Item.dicom_status is the answer; ignored ones are stored."""
    refused = dataset(chest_pixels(), SOPClassUID="1.2.840.10008.5.1.4.1.2.1.1")  # a query class, not storage
    knee = dataset(chest_pixels(), BodyPartExamined="KNEE")
    with served(app) as base:
        response = stow(base, users["uploader"], [to_bytes(refused), to_bytes(knee)])
    assert response.status_code == 202
    assert _failures(response.json()) == {refused.SOPInstanceUID: 0x0122}
    assert [item[SOP_INSTANCE]["Value"][0] for item in response.json()[REFERENCED]["Value"]] == [knee.SOPInstanceUID]
    with services_of(app).sessions() as session:
        row = session.scalar(select(Study).where(Study.sop_instance_uid == knee.SOPInstanceUID))
        assert row.not_applicable and "chest" in row.not_applicable and row.prediction is None
        counted = {(labels["outcome"], labels["status"]): value for name, labels, value in counters.read_all(session)
                   if name == counters.DICOM_INSTANCES and labels["via"] == "stow-rs"}
    assert counted == {("ignored", "0x0000"): 1, ("refused", "0x0122"): 1}  # /metrics counts both
