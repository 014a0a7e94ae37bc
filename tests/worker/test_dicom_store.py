"""C-STORE of a study result's SR and SC to a real pynetdicom storage SCP started in the test."""
import socket
import time

import pytest
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage
from pynetdicom import AE, evt
from pynetdicom.sop_class import ComputedRadiographyImageStorage

from core.services import services_of
from db.models import Study, StudyResult
from studies.dicom_reports import secondary_capture, structured_report
from tests.helpers import free_port
from tests.studies.reported import reported_result
from worker import dicom_store
from worker.dicom_store import DeliveryError, c_store

# What travels does not depend on the database (tests/studies/test_dicom_reports.py builds it on both).
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


class Pacs:
    """A storage SCP on a free port: keeps what arrives (data set and calling AE) and answers `status`."""

    def __init__(self, status: int = 0x0000, calling: list[str] | None = None,
                 sop_classes=(ComprehensiveSRStorage, SecondaryCaptureImageStorage), delay_s: float = 0.0):
        self.status, self.received, self.delay_s = status, [], delay_s
        self.ae = AE(ae_title="TESTPACS")
        self.ae.require_calling_aet = calling or []  # empty: anyone may call
        for sop_class in sop_classes:
            self.ae.add_supported_context(sop_class)
        self.port = free_port()
        self.server = self.ae.start_server(("127.0.0.1", self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event) -> int:
        time.sleep(self.delay_s)
        dataset = event.dataset
        dataset.file_meta = event.file_meta  # the transfer syntax it came in, as a PACS would file it
        self.received.append((event.assoc.requestor.ae_title, dataset))
        return self.status

    def destination(self, **extra) -> dict:
        return {"ae_title": "TESTPACS", "host": "127.0.0.1", "port": self.port, **extra}

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def pacs():
    started = []

    def start(**kwargs) -> Pacs:
        started.append(Pacs(**kwargs))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def reported(app):
    """The SR and SC of a real film's study result, with the original image's UIDs."""
    services = services_of(app)
    result_id = reported_result(services)
    with services.sessions() as session:
        result = session.get(StudyResult, result_id)
        image = session.get(Study, result.decided_by_image_id)
        datasets = [structured_report(session, services.storage, result),
                    secondary_capture(session, services.storage, result)]
        return datasets, image.study_instance_uid, image.accession_number, result.call


@sqlite_only
def test_pacs_receives_sr_and_sc_in_the_original_study(pacs, reported):
    datasets, study_uid, accession, call = reported
    server = pacs()

    c_store(server.destination(), datasets)

    assert [ae for ae, _ in server.received] == ["PNEUMOSCREEN", "PNEUMOSCREEN"]
    sr, sc = (ds for _, ds in server.received)
    assert (sr.SOPClassUID, sc.SOPClassUID) == (ComprehensiveSRStorage, SecondaryCaptureImageStorage)
    assert sr.StudyInstanceUID == sc.StudyInstanceUID == study_uid
    assert sr.AccessionNumber == sc.AccessionNumber == accession == "exam Number"
    assert sr.SOPInstanceUID == datasets[0].SOPInstanceUID and sc.SOPInstanceUID == datasets[1].SOPInstanceUID
    findings = next(item for item in sr.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121070")
    finding = next(item for item in findings.ContentSequence if item.ConceptNameCodeSequence[0].CodeValue == "121071")
    assert finding.ConceptCodeSequence[0].CodeMeaning.upper() == call
    assert sc.BurnedInAnnotation == "YES" and sc.pixel_array.shape == (sc.Rows, sc.Columns, 3)

    c_store(server.destination(calling_ae="RESULTS"), datasets[:1])  # a retry: the same instance again
    assert server.received[-1][0] == "RESULTS"
    assert server.received[-1][1].SOPInstanceUID == datasets[0].SOPInstanceUID


@sqlite_only
def test_warning_status_counts_as_stored(pacs, reported):
    server = pacs(status=0xB000)  # "coercion of data elements": the PACS kept it
    c_store(server.destination(), reported[0])
    assert len(server.received) == 2


@sqlite_only
def test_rejected_association_is_a_delivery_error(pacs, reported):
    server = pacs(calling=["SOMEONEELSE"])
    rejected = r"TESTPACS@127\.0\.0\.1:\d+: association rejected .*Calling AE title not recognised"
    with pytest.raises(DeliveryError, match=rejected):
        c_store(server.destination(), reported[0])
    assert server.received == []


@sqlite_only
def test_failure_status_is_a_delivery_error_and_stops_the_association(pacs, reported):
    server = pacs(status=0xA700)
    with pytest.raises(DeliveryError, match=r"refused Comprehensive SR Storage .*status 0xA700 \(Failure\)") as error:
        c_store(server.destination(), reported[0])
    assert error.value.reason == str(error.value)
    assert len(server.received) == 1  # the SC was not sent after the SR failed
    assert _closes(server)


@sqlite_only
def test_a_store_that_gets_no_answer_times_out(pacs, reported, monkeypatch):
    monkeypatch.setattr(dicom_store, "TIMEOUT_S", 1)
    server = pacs(delay_s=3)
    with pytest.raises(DeliveryError, match="no answer to C-STORE of Comprehensive SR Storage"):
        c_store(server.destination(), reported[0])


@sqlite_only
def test_sop_class_the_pacs_does_not_take(pacs, reported):
    server = pacs(sop_classes=[ComputedRadiographyImageStorage, ComprehensiveSRStorage])
    with pytest.raises(DeliveryError, match="does not accept Secondary Capture Image Storage"):
        c_store(server.destination(), reported[0])


@sqlite_only
def test_nothing_listening_is_a_delivery_error(reported):
    with pytest.raises(DeliveryError, match="no association: nothing listening there"):
        c_store({"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}, reported[0])


@sqlite_only
def test_a_peer_that_never_answers_times_out(reported, monkeypatch):
    monkeypatch.setattr(dicom_store, "TIMEOUT_S", 2)
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts the connection, never says a word
        started = time.monotonic()
        with pytest.raises(DeliveryError, match="no association: no answer within 2 s"):
            c_store({"ae_title": "PACS", "host": "127.0.0.1", "port": silent.getsockname()[1]}, reported[0])
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("destination, problem", [
    ({"host": "127.0.0.1", "port": 104}, "ae_title must be"),
    ({"ae_title": "A" * 17, "host": "127.0.0.1", "port": 104}, "ae_title must be"),
    ({"ae_title": "PACS", "host": "", "port": 104}, "no host"),
    ({"ae_title": "PACS", "host": "pacs", "port": "104; rm"}, "port must be"),
    ({"ae_title": "PACS", "host": "pacs", "port": 70000}, "port must be"),
    ({"ae_title": "PACS", "host": "pacs", "port": 104, "calling_ae": "BAD\\AE"}, "calling_ae must be"),
])
def test_bad_destination_says_what_is_wrong(destination, problem):
    with pytest.raises(DeliveryError, match=problem):
        c_store(destination, [])


def _closes(server: Pacs) -> bool:
    deadline = time.monotonic() + 5
    while server.ae.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    return not server.ae.active_associations
