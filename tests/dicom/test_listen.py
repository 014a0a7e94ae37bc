"""DICOM network receive: pynetdicom as the sending modality; C-ECHO, C-STORE, quiet-time study completion."""
import logging
import time

import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification
from sqlalchemy import select

from core.services import services_of
from core.settings import DicomCaller
from db.models import AuditEvent, Batch, Department, DicomPending, Study
from pneumoscreen.dicom_listen import Listener
from tests.dicom.factory import SECRET_ID, SECRET_NAME, chest_pixels, dataset, j2k
from tests.helpers import free_port


@pytest.fixture
def listener(app):
    services = services_of(app)
    scp = Listener(services, "PNEUMOTEST", free_port(), "127.0.0.1", quiet_s=1,
                   callers=(DicomCaller("MODALITY", "Radiology"), DicomCaller("FARAWAY", "Radiology", ("10.9.9.9",))))
    scp.start(block=False)
    yield scp
    scp.stop()


def _modality() -> AE:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(Verification)
    # One context per transfer syntax: the SCP accepts one syntax per context.
    ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(ComputedRadiographyImageStorage, JPEG2000Lossless)
    return ae


def test_echo_and_store_a_study_that_completes_after_quiet_time(app, listener, caplog):
    caplog.set_level(logging.DEBUG)
    study = [dataset(chest_pixels(), study_uid="1.2.3.77", view="PA"),
             j2k(dataset(chest_pixels(), study_uid="1.2.3.77", view="LL"))]
    tiny = dataset(chest_pixels(16, 16))  # refused at the door with a reason (tests/dicom/test_applicability.py)
    assoc = _modality().associate("127.0.0.1", listener.address[1], ae_title="PNEUMOTEST")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        assert [assoc.send_c_store(ds).Status for ds in study] == [0x0000, 0x0000]
        refused = assoc.send_c_store(tiny)
        assert refused.Status == 0xC000 and "too small" in refused.ErrorComment
    finally:
        assoc.release()
    sessions = services_of(app).sessions
    with sessions() as session:
        assert session.scalars(select(Study)).all() == []  # not complete until the quiet time passed
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with sessions() as session:
            rows = session.scalars(select(Study).order_by(Study.id)).all()
            if rows:
                break
        time.sleep(0.3)
    with sessions() as session:
        rows = session.scalars(select(Study).order_by(Study.id)).all()
        assert [row.sop_instance_uid for row in rows] == [ds.SOPInstanceUID for ds in study]
        assert {row.study_instance_uid for row in rows} == {"1.2.3.77"} and len({r.batch_id for r in rows}) == 1
        assert session.get(Batch, rows[0].batch_id).source == "dicom"
    assert len(list(services_of(app).settings.broker_dir.glob("*.msg"))) == 1
    assert SECRET_NAME.split("^")[0] not in caplog.text and SECRET_ID not in caplog.text


def test_stop_queues_what_arrived(app, listener):
    assoc = _modality().associate("127.0.0.1", listener.address[1], ae_title="PNEUMOTEST")
    assert assoc.send_c_store(dataset(chest_pixels())).Status == 0x0000
    assoc.release()
    listener.quiet_s = 3600
    listener.stop()
    with services_of(app).sessions() as session:
        assert len(session.scalars(select(Study)).all()) == 1


def _rows(app, timeout: float = 15) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with services_of(app).sessions() as session:
            rows = session.execute(select(Study, Batch).join(Batch)).all()
            if rows:
                return rows
        time.sleep(0.3)
    return []


def test_only_allowed_callers_from_their_addresses_are_accepted_and_audited(app, listener):
    stranger = AE(ae_title="STRANGER")
    stranger.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    assert stranger.associate("127.0.0.1", listener.address[1], ae_title="PNEUMOTEST").is_rejected
    # An allowed title from an address it is not listed for is refused too.
    far = AE(ae_title="FARAWAY")
    far.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    assert far.associate("127.0.0.1", listener.address[1], ae_title="PNEUMOTEST").is_rejected

    assoc = _modality().associate("127.0.0.1", listener.address[1], ae_title="PNEUMOTEST")
    assert assoc.is_established and assoc.send_c_store(dataset(chest_pixels())).Status == 0x0000
    assoc.release()
    [(study, batch)] = _rows(app)
    with services_of(app).sessions() as session:
        assert session.get(Department, batch.department_id).name == "Radiology"
        rejected = session.scalars(select(AuditEvent.detail).where(AuditEvent.action == "dicom.rejected")).all()
        upload = session.scalar(select(AuditEvent.detail).where(AuditEvent.action == "batch.upload"))
    assert sorted(event["calling_ae"] for event in rejected) == ["FARAWAY", "STRANGER"]
    assert all(event["address"] == "127.0.0.1" for event in rejected)
    assert upload["calling_ae"] == "MODALITY" and upload["address"] == "127.0.0.1"


def test_a_listener_with_no_allowed_caller_does_not_start(app):
    with pytest.raises(ValueError, match="PNEUMOSCREEN_DICOM_CALLERS"):
        Listener(services_of(app), "PNEUMOTEST", free_port(), callers=())


def test_dicom_over_tls(app, tmp_path):
    import ssl
    import subprocess

    from pneumoscreen.dicom_listen import tls_context

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    scp = Listener(services_of(app), "PNEUMOTEST", free_port(), "127.0.0.1", quiet_s=1,
                   callers=(DicomCaller("MODALITY", "Radiology"),), ssl_context=tls_context(cert, key, None))
    scp.start(block=False)
    try:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        assoc = _modality().associate("127.0.0.1", scp.address[1], ae_title="PNEUMOTEST",
                                      tls_args=(client, "localhost"))
        assert assoc.is_established and assoc.send_c_echo().Status == 0x0000
        assoc.release()
        # Without TLS the listener does not talk at all.
        assert not _modality().associate("127.0.0.1", scp.address[1], ae_title="PNEUMOTEST").is_established
    finally:
        scp.stop()


def test_what_was_acknowledged_survives_a_crashed_listener(app):
    services = services_of(app)
    callers = (DicomCaller("MODALITY", "Radiology"),)
    crashed = Listener(services, "PNEUMOTEST", free_port(), "127.0.0.1", quiet_s=3600, callers=callers)
    crashed.start(block=False)
    assoc = _modality().associate("127.0.0.1", crashed.address[1], ae_title="PNEUMOTEST")
    assert assoc.send_c_store(dataset(chest_pixels(), study_uid="1.2.3.99")).Status == 0x0000
    assoc.release()
    crashed.server.shutdown()  # gone without flushing, as kill -9 would leave it
    crashed.stopped.set()
    with services.sessions() as session:
        assert session.scalars(select(Study)).all() == []
    successor = Listener(services, "PNEUMOTEST", free_port(), "127.0.0.1", quiet_s=1, callers=callers)
    successor.start(block=False)
    try:
        [(study, _)] = _rows(app)
        assert study.study_instance_uid == "1.2.3.99"
    finally:
        successor.stop()


def test_an_instance_that_cannot_be_kept_is_refused_not_acknowledged(app, tmp_path):
    from dataclasses import replace

    from db.session import make_engine, make_session_factory

    scp = Listener(services_of(app), "PNEUMOTEST", free_port(), "127.0.0.1", quiet_s=1,
                   callers=(DicomCaller("MODALITY", "Radiology"),))
    # The database goes away (a file in a folder that does not exist): nothing can be recorded.
    scp.services = replace(scp.services, sessions=make_session_factory(make_engine(
        f"sqlite:///{tmp_path / 'missing' / 'gone.db'}")))
    scp.start(block=False)
    try:
        assoc = _modality().associate("127.0.0.1", scp.address[1], ae_title="PNEUMOTEST")
        assert assoc.send_c_store(dataset(chest_pixels())).Status == 0xA700
        assoc.release()
    finally:
        scp.server.shutdown()
        scp.stopped.set()


def test_one_address_cannot_take_every_association(app, listener):
    from pneumoscreen.dicom_listen import MAX_ASSOCIATIONS_PER_ADDRESS

    held = [_modality().associate("127.0.0.1", listener.address[1], ae_title="PNEUMOTEST")
            for _ in range(MAX_ASSOCIATIONS_PER_ADDRESS)]
    try:
        assert all(assoc.is_established for assoc in held)
        extra = _modality().associate("127.0.0.1", listener.address[1], ae_title="PNEUMOTEST")
        assert extra.is_rejected
    finally:
        for assoc in held:
            assoc.release()
    deadline = time.monotonic() + 10  # released associations end their threads within moments
    while listener._associations_from("127.0.0.1") and time.monotonic() < deadline:
        time.sleep(0.1)
    again = _modality().associate("127.0.0.1", listener.address[1], ae_title="PNEUMOTEST")
    assert again.is_established
    again.release()


def test_an_instance_over_the_size_limit_is_refused_from_its_file(app, listener, monkeypatch):
    from pneumoscreen import dicom_listen

    monkeypatch.setattr(dicom_listen, "MAX_FILE_BYTES", 10_000)  # received to a file, measured before reading
    assoc = _modality().associate("127.0.0.1", listener.address[1], ae_title="PNEUMOTEST")
    try:
        assert assoc.send_c_store(dataset(chest_pixels())).Status == 0xA700
    finally:
        assoc.release()
    with services_of(app).sessions() as session:
        assert session.scalars(select(DicomPending)).all() == []
