"""DICOM network receive: pynetdicom as the sending modality; C-ECHO, C-STORE, quiet-time study completion."""
import logging
import time

import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage, Verification
from sqlalchemy import select

from core.services import services_of
from db.models import Batch, Study
from pneumoscreen.dicom_listen import Listener
from tests.dicom.factory import SECRET_ID, SECRET_NAME, chest_pixels, dataset, j2k
from tests.helpers import free_port


@pytest.fixture
def listener(app):
    services = services_of(app)
    scp = Listener(services, "PNEUMOTEST", free_port(), "127.0.0.1", quiet_s=1)
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
    colour = dataset(chest_pixels(), photometric="RGB")
    assoc = _modality().associate("127.0.0.1", listener.address[1], ae_title="PNEUMOTEST")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        assert [assoc.send_c_store(ds).Status for ds in study] == [0x0000, 0x0000]
        assert assoc.send_c_store(colour).Status == 0xA900
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
