"""A real DICOM film from intake to every destination: screened, its study result refreshed and queued by the
real path (studies.results), then delivered as SR and SC to a PACS, an ORU^R01 to a RIS and a DiagnosticReport
to a FHIR server, all started in the test."""
from sqlalchemy import select

from core.services import services_of
from db.accounts import create_user, ensure_department
from db.models import OutboundMessage, Study
from studies.intake import submit_uploads
from studies.outbound import check_config
from tests.helpers import data_dir
from tests.studies.reported import HeatStub
from tests.worker.peers import FhirPeer, MllpPeer, StorePeer
from worker import pipeline
from worker.outbound import deliver_due


def test_a_screened_dicom_study_reaches_pacs_ris_and_fhir(app):
    services = services_of(app)
    film = (data_dir("dicom") / "RG1_J2KI.dcm").read_bytes()
    pacs, ris, fhir = StorePeer(), MllpPeer(("AA",)), FhirPeer()
    try:
        with services.sessions.begin() as session:
            department = ensure_department(session, "Radiology")
            department.outbound = check_config({
                "dicom": {"ae_title": "TESTPACS", "host": "127.0.0.1", "port": pacs.port},
                "hl7": {"host": "127.0.0.1", "port": ris.port}, "fhir": {"url": fhir.url}})
            uploader_id = create_user(session, "uploader", "uploader", None, department_id=department.id).id
        batch, rejected, accepted = submit_uploads(services, [("film.dcm", film)], uploader_id, "api")
        assert accepted == 1 and not rejected
        with services.sessions() as session:
            ids = list(session.scalars(select(Study.id).where(Study.batch_id == batch.id)))
        pipeline.run_batch(services.sessions, services.storage, HeatStub(), ids)
        with services.sessions() as session:
            image = session.get(Study, ids[0])
            uid, accession, result_id = image.study_instance_uid, image.accession_number, image.study_result_id
            queued = session.scalars(select(OutboundMessage).where(OutboundMessage.study_result_id == result_id)
                                     .order_by(OutboundMessage.result_version.desc())).all()
        newest = queued[0].result_version
        # This adult film is out of the model's scope: no deciding image, so no Secondary Capture to send.
        assert sorted(m.kind for m in queued if m.result_version == newest) == ["fhir", "hl7", "sr"]

        outcome = deliver_due(services.sessions, services.storage)
    finally:
        for peer in (pacs, ris, fhir):
            peer.close()

    assert outcome.get("sent") == 3, outcome
    assert [str(ds.SOPClassUID.name) for ds in pacs.received] == ["Comprehensive SR Storage"]
    assert {ds.StudyInstanceUID for ds in pacs.received} == {uid}
    [oru] = ris.received
    assert oru.unescape(str(oru.segment("OBR")[2])) == (accession or f"PS{result_id}")
    assert [str(obx[5]) for obx in oru.segments("OBX") if str(obx[3][0][0]) == "110180"] == [uid]
    [put] = fhir.requests
    assert "invalid" not in put and put["report"].imagingStudy[0].identifier.value == f"urn:oid:{uid}"
    assert put["report"].status == "preliminary" and str(oru.segment("OBR")[25]) == "P"
