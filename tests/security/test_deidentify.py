"""Privacy at rest: DICOM originals are stored de-identified (PS3.15 basic profile, allow list), byte-stable, with
the same pixels; through upload, STOW-RS's intake and the DICOM listener; off with PNEUMOSCREEN_DEIDENTIFY=off."""
import hashlib
import io
import logging
import time
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage
from sqlalchemy import select

from core.services import services_of
from core.settings import ConfigError, DicomCaller, Settings
from db.models import Study
from models.dicom import decode_dicom, deidentify, header_meta
from models.limits import ImageDecodeError
from pneumoscreen.app import create_app
from pneumoscreen.dicom_listen import Listener
from studies.pictures import picture
from tests.dicom.factory import SECRET_ID, SECRET_NAME, chest_pixels, dataset, j2k, to_bytes
from tests.helpers import StubScreener, bearer, free_port
from worker import pipeline

# Every identifying value a test file carries: none may be found in anything stored.
SECRETS = {
    "PatientName": SECRET_NAME, "PatientID": SECRET_ID, "PatientBirthDate": "19570311",
    "OtherPatientIDs": "OTHER-77120", "PatientAddress": "12 Elm Street Springfield",
    "PatientTelephoneNumbers": "555-0142-77", "InstitutionName": "St Elsewhere Hospital",
    "InstitutionAddress": "1 Hospital Road Boston", "ReferringPhysicianName": "HOUSE^GREGORY",
    "PerformingPhysicianName": "QUINN^MICHAELA", "OperatorsName": "TECH^TERRY", "StudyDescription": "CHEST JANE",
    "PatientComments": "lives with daughter", "DeviceSerialNumber": "SN-99812734", "StationName": "XRAYROOM7",
}


def identified(**extra) -> Dataset:
    """A chest film carrying every kind of identifier: attributes, a sequence, private tags, an overlay's text."""
    ds = dataset(chest_pixels(), study_uid="1.2.3.4.5", AccessionNumber="ACC123456", PatientSex="F",
                 StudyDate="20250101", StudyTime="101500", AcquisitionDate="20250101", AcquisitionTime="101512",
                 FrameOfReferenceUID="1.2.3.4.6", WindowCenter=2048, WindowWidth=4096, **extra)
    del ds.PatientAge  # computed from birth and study dates (Retain Patient Characteristics)
    for keyword, value in SECRETS.items():
        setattr(ds, keyword, value)
    other = Dataset()
    other.PatientID, other.IssuerOfPatientID = "SEQ-ID-55107", "Other hospital"
    ds.OtherPatientIDsSequence = Sequence([other])
    ds.add_new(0x00090010, "LO", "ACME private")
    ds.add_new(0x00091001, "LO", "private name TOPSECRET")
    ds.add_new(0x60003000, "OW", b"\x01\x00" * 32)  # overlay data
    ds.add_new(0x60004000, "LT", "overlay says OVERLAYTEXT")  # overlay comments
    return ds


def leaked(data: bytes) -> list[str]:
    """The identifying texts found in a file (a deflated data set is inflated first)."""
    if data[128:132] == b"DICM" and DeflatedExplicitVRLittleEndian.encode() in data[:400]:
        meta_end = 144 + int.from_bytes(data[140:144], "little")
        data = data[:meta_end] + zlib.decompress(data[meta_end:], -zlib.MAX_WBITS)
    texts = [*SECRETS.values(), "SEQ-ID-55107", "TOPSECRET", "OVERLAYTEXT", "ACME", SECRET_NAME.split("^")[0]]
    return [text for text in texts if text.encode() in data]


def test_only_what_the_service_needs_is_kept():
    received = to_bytes(identified())
    stored = deidentify(received)
    assert leaked(received) and not leaked(stored)
    ds = pydicom.dcmread(io.BytesIO(stored))
    original = pydicom.dcmread(io.BytesIO(received))
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "FrameOfReferenceUID",
                    "AccessionNumber", "PatientSex", "ViewPosition", "Modality", "BodyPartExamined", "StudyDate",
                    "StudyTime", "AcquisitionDate", "AcquisitionTime", "WindowCenter", "WindowWidth", "Rows",
                    "BitsStored", "PhotometricInterpretation"):
        assert ds[keyword].value == original[keyword].value, keyword
    assert ds.PatientAge == "067Y"  # 1957-03-11 to 2025-01-01
    assert ds.PatientName == "" and ds.PatientID == "" and ds.PatientBirthDate == ""  # Type 2: present, empty
    for keyword in ("OtherPatientIDs", "OtherPatientIDsSequence", "PatientAddress", "InstitutionName",
                    "InstitutionAddress", "PerformingPhysicianName", "OperatorsName", "StudyDescription",
                    "DeviceSerialNumber", "PatientTelephoneNumbers"):
        assert keyword not in ds, keyword
    assert not any(tag.is_private for tag in ds.keys()) and not any(tag.group >> 8 == 0x60 for tag in ds.keys())
    assert ds.PatientIdentityRemoved == "YES" and ds.LongitudinalTemporalInformationModified == "UNMODIFIED"
    assert [code.CodeValue for code in ds.DeidentificationMethodCodeSequence] == ["113100", "113110", "113106",
                                                                                 "113108"]
    assert ds.PixelData == original.PixelData
    assert np.array_equal(decode_dicom(stored), decode_dicom(received))
    assert header_meta(stored) == header_meta(received)  # the study row is the same either way


def test_deterministic_and_idempotent():
    ds = identified()
    received = to_bytes(ds)
    stored = deidentify(received)
    assert deidentify(to_bytes(ds)) == stored  # same input, same bytes
    assert deidentify(stored) == stored  # stored again (the listener's pending file goes through intake again)
    ds.PatientName = "CORRECTED^NAME"
    assert deidentify(to_bytes(ds)) == stored  # only the identity changed: the same image, the same stored file


def _bare(ds: Dataset) -> bytes:
    return to_bytes(ds, preamble=False)


def _big_endian(ds: Dataset) -> bytes:
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _deflated(ds: Dataset) -> bytes:
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _lying_meta(ds: Dataset) -> bytes:
    """File meta says explicit VR; the data set after it is implicit VR."""
    explicit = to_bytes(ds)
    meta_end = 144 + int.from_bytes(explicit[140:144], "little")
    return explicit[:meta_end] + _bare(ds)


def _hidden_in_sequences(ds: Dataset) -> bytes:
    """A kept sequence (VOI LUT) with a name in its item, and a private sequence holding another data set."""
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 12])  # LUT descriptor
    item.add_new(0x00283006, "US", list(range(4096)))  # LUT data: the identity
    item.PatientName = SECRET_NAME
    ds.VOILUTSequence = Sequence([item])
    inner = Dataset()
    inner.PatientName, inner.PatientID = SECRET_NAME, SECRET_ID
    ds.add_new(0x00091002, "SQ", Sequence([inner]))
    return to_bytes(ds)


def _garbage_values(ds: Dataset) -> bytes:
    ds.PatientBirthDate = "not a date"
    ds.StudyDate = "2025-13-45"
    return to_bytes(ds)


@pytest.mark.parametrize("make", [_bare, _big_endian, _deflated, _lying_meta, _hidden_in_sequences, _garbage_values,
                                  lambda ds: to_bytes(j2k(ds))],
                         ids=["no-meta-implicit", "big-endian", "deflated", "meta-lies", "sequences", "garbage",
                              "jpeg2000"])
def test_odd_files_keep_their_pixels_and_lose_their_identifiers(make):
    received = make(identified())
    stored = deidentify(received)
    assert leaked(received) and not leaked(stored)
    assert np.array_equal(decode_dicom(stored), decode_dicom(received))
    assert deidentify(stored) == stored
    assert pydicom.dcmread(io.BytesIO(stored)).preamble == b"\0" * 128


def test_unreadable_file_is_refused_not_passed_through():
    with pytest.raises(ImageDecodeError):
        deidentify(b"\0" * 128 + b"DICM" + b"\xff" * 40)


def test_setting_is_strict():
    assert Settings.from_env({}).deidentify is True
    assert Settings.from_env({"PNEUMOSCREEN_DEIDENTIFY": "off"}).deidentify is False
    with pytest.raises(ConfigError, match="PNEUMOSCREEN_DEIDENTIFY"):
        Settings.from_env({"PNEUMOSCREEN_DEIDENTIFY": "maybe"})
    assert Settings.from_env({}).retention_days is None
    assert Settings.from_env({"PNEUMOSCREEN_RETENTION_DAYS": "30"}).retention_days == 30
    for bad in ("0", "-5", "thirty"):
        with pytest.raises(ConfigError, match="PNEUMOSCREEN_RETENTION_DAYS"):
            Settings.from_env({"PNEUMOSCREEN_RETENTION_DAYS": bad})


def _stored_files(services) -> list[Path]:
    return [path for path in services.storage.root.rglob("*") if path.is_file()]


def _upload(client, token, data: bytes, name: str = "film.dcm"):
    response = client.post("/api/v1/batches", headers=bearer(token), content_type="multipart/form-data",
                           data={"files": [(io.BytesIO(data), name)]})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["id"]


def test_upload_stores_deidentified_and_finds_the_resent_instance(app, users, caplog):
    caplog.set_level(logging.DEBUG)
    services, client = services_of(app), app.test_client()
    received = to_bytes(identified())
    first = _upload(client, users["uploader"], received)
    again = _upload(client, users["uploader"], received)
    with services.sessions() as session:
        one, two = (session.scalar(select(Study).where(Study.batch_id == batch)) for batch in (first, again))
        stored = services.storage.get(one.storage_key)
        assert one.content_sha256 == hashlib.sha256(stored).hexdigest()  # the hash is of the stored bytes
        assert two.duplicate_of_id == one.id and two.storage_key == one.storage_key
        assert (one.accession_number, one.patient_age, one.patient_sex, one.view_position) == ("ACC123456", "067Y",
                                                                                              "F", "PA")
    assert not leaked(stored) and np.array_equal(decode_dicom(stored), decode_dicom(received))
    pipeline.run_batch(services.sessions, services.storage, StubScreener(), [one.id])
    with services.sessions() as session:  # the pictures people open, made as a page would ask for them
        assert all(picture(services.storage, session.get(Study, one.id), kind) for kind in ("thumb", "view", "crop"))
    for path in _stored_files(services):  # originals and derived pictures alike
        assert not leaked(path.read_bytes()), path
    assert not leaked(caplog.text.encode())


def test_setting_off_stores_the_bytes_as_received(settings, users):
    app = create_app(settings=settings.with_overrides({"deidentify": False}))
    services = services_of(app)
    try:
        from db.accounts import create_user, issue_token
        with services.sessions.begin() as session:
            token = issue_token(session, create_user(session, "plain", "uploader", "plain-password-9"))
        received = to_bytes(identified())
        batch = _upload(app.test_client(), token, received)
        with services.sessions() as session:
            key = session.scalar(select(Study.storage_key).where(Study.batch_id == batch))
        assert services.storage.get(key) == received
    finally:
        services.engine.dispose()


def test_listener_keeps_only_deidentified_files(app):
    services = services_of(app)
    listener = Listener(services, "PNEUMOTEST", free_port(), "127.0.0.1", quiet_s=1,
                        callers=(DicomCaller("MODALITY", "Radiology"),))
    listener.start(block=False)
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(ComputedRadiographyImageStorage)
        ds = identified()
        assoc = ae.associate("127.0.0.1", listener.address[1], ae_title="PNEUMOTEST")
        assert assoc.is_established
        try:
            assert assoc.send_c_store(ds).Status == 0x0000
        finally:
            assoc.release()
        # Kept before it was acknowledged: already de-identified while it waits for its study to complete.
        assert [path for path in _stored_files(services) if leaked(path.read_bytes())] == []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with services.sessions() as session:
                study = session.scalar(select(Study))
            if study is not None:
                break
            time.sleep(0.3)
    finally:
        listener.stop()
    assert study is not None and study.sop_instance_uid == ds.SOPInstanceUID and study.patient_age == "067Y"
    files = _stored_files(services)
    assert [path.relative_to(services.storage.root).as_posix() for path in files] == [study.storage_key]
    assert not leaked(files[0].read_bytes()) and pydicom.dcmread(files[0]).PatientIdentityRemoved == "YES"
