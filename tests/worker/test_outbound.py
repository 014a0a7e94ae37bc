"""Delivering results: HL7 ORU^R01 to a real MLLP listener (AA, AE, silence), FHIR to a real HTTP server that
validates the report, retries with backoff, failure after the last attempt, `retry`, versions in order, and two
deliverers at once never sending one message twice."""
import threading
from datetime import timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from core.storage import Storage
from db.accounts import create_user
from db.models import AuditEvent, Batch, Department, OutboundMessage, ReviewFlag, Study, StudyResult, User, utcnow
from db.session import make_engine, make_session_factory
from studies.outbound import check_config, queue_many, retry
from tests.helpers import free_port, wait_until
from tests.worker.peers import FhirPeer, MllpPeer
from worker import outbound
from worker.outbound import LEASE, MAX_ATTEMPTS, backoff, deliver_due, start_delivery


@pytest.fixture
def sessions(database_url):
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


@pytest.fixture
def storage(tmp_path):
    return Storage(tmp_path / "storage")


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(outbound, "TIMEOUT_S", 1.0)


@pytest.fixture
def ris():
    peers = []

    def start(*answers, delay=0.0):
        peers.append(MllpPeer(answers or ("AA",), delay))
        return peers[-1]

    yield start
    for peer in peers:
        peer.close()


def hl7_to(port: int) -> dict:
    return {"hl7": {"host": "127.0.0.1", "port": port, "receiving_application": "RIS", "receiving_facility": "HOSP"}}


def add_result(sessions, config: dict, flags=(), **columns) -> int:
    """A department with `config`, one result (final, PNEUMONIA) with one image, and its messages queued."""
    with sessions.begin() as session:
        department = session.scalar(select(Department).where(Department.name == "Radiology"))
        if department is None:
            department = Department(name="Radiology")
            session.add(department)
        department.outbound = check_config(config)
        session.flush()
        values = {"department_id": department.id, "study_instance_uid": "1.2.826.0.1.3680043.8.498.7",
                  "accession_number": "ACC|7", "scope": "in_scope", "call": "PNEUMONIA", "probability": 0.912345,
                  "threshold": 0.5, "model_version": "ensemble-3", "status": "final", "version": 1} | columns
        result = StudyResult(**values)
        session.add(result)
        session.flush()
        user = session.scalar(select(User).limit(1)) or \
            create_user(session, "uploader", "uploader", None, department_id=department.id)
        batch = Batch(created_by=user.id, department_id=department.id)
        session.add(batch)
        session.flush()
        image = Study(batch_id=batch.id, filename="a.dcm", content_sha256="0" * 64, storage_key="k", status="done",
                      study_result_id=result.id)
        session.add(image)
        session.flush()
        result.decided_by_image_id = image.id
        if flags:
            session.add(ReviewFlag(study_id=image.id, reasons=list(flags)))
        queue_many(session, [result])
        return result.id


def message_of(sessions, result_id: int, kind: str = "hl7", version: int | None = None) -> OutboundMessage:
    with sessions() as session:
        query = select(OutboundMessage).where(OutboundMessage.study_result_id == result_id,
                                              OutboundMessage.kind == kind)
        if version is not None:
            query = query.where(OutboundMessage.result_version == version)
        return session.scalars(query.order_by(OutboundMessage.result_version.desc())).first()


def new_version(sessions, result_id: int, status: str, **columns) -> None:
    with sessions.begin() as session:
        result = session.get(StudyResult, result_id)
        result.version += 1
        result.status = status
        for name, value in columns.items():
            setattr(result, name, value)
        queue_many(session, [result])


def test_backoff_doubles_from_30_seconds_up_to_an_hour():
    assert [backoff(n).total_seconds() for n in range(1, 10)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_an_oru_reaches_the_ris_and_is_acknowledged(sessions, storage, ris):
    peer = ris("AA")
    result_id = add_result(sessions, hl7_to(peer.port), flags=["near_threshold", "out_of_scope"],
                           review_decision="pneumonia", status="corrected")

    assert deliver_due(sessions, storage) == {"sent": 1}

    message = message_of(sessions, result_id)
    assert (message.state, message.attempts, message.last_error) == ("sent", 1, None) and message.sent_at
    [oru] = peer.received
    msh, obr = oru.segment("MSH"), oru.segment("OBR")
    assert str(msh[9]) == "ORU^R01^ORU_R01" and str(msh[12]) == "2.5.1" and str(msh[10]) == f"PS{message.id}"
    assert str(msh[5]) == "RIS" and str(msh[6]) == "HOSP" and str(msh[4]) == "Radiology"
    assert [str(s[0]) for s in oru] == ["MSH", "PID", "ORC", "OBR"] + ["OBX"] * 8
    accession = oru.unescape(str(obr[2]))
    assert accession == "ACC|7" and oru.unescape(str(obr[3])) == "ACC|7"  # delimiters escaped, not split
    assert oru.unescape(str(oru.segment("ORC")[2])) == "ACC|7" and str(oru.segment("PID")[3][0][4]) == "ACSN"
    assert str(obr[25]) == "C"  # corrected
    observations = {str(obx[3][0][0]): (str(obx[2]), str(obx[5]), str(obx[11])) for obx in oru.segments("OBX")}
    assert observations["110180"][:2] == ("ST", "1.2.826.0.1.3680043.8.498.7")
    assert observations["pneumonia-call"][:2] == ("CWE", "233604007^Pneumonia^SCT")
    assert observations["pneumonia-probability"][:2] == ("NM", "0.9123")
    assert observations["call-threshold"][:2] == ("NM", "0.5000")
    assert observations["model-version"][:2] == ("ST", "ensemble-3")
    assert observations["flag-reasons"][:2] == ("ST", "near_threshold, out_of_scope")
    assert observations["review-decision"][:2] == ("CWE", "233604007^Pneumonia^SCT")
    assert {status for _, _, status in observations.values()} == {"C"}
    with sessions() as session:
        actions = session.scalars(select(AuditEvent.action).where(AuditEvent.object_type == "outbound_message")
                                  .order_by(AuditEvent.id)).all()
    assert actions == ["outbound.queued", "outbound.sending", "outbound.sent"]


@pytest.mark.parametrize("status, code", [("preliminary", "P"), ("final", "F"), ("amended", "C"),
                                          ("cancelled", "X")])
def test_obr_25_follows_the_report_status(sessions, storage, ris, status, code):
    peer = ris("AA")
    add_result(sessions, hl7_to(peer.port), status=status)
    deliver_due(sessions, storage)
    assert str(peer.received[0].segment("OBR")[25]) == code


def test_an_error_ack_is_retried_with_backoff_then_sent(sessions, storage, ris):
    peer = ris("AE", "AA")
    result_id = add_result(sessions, hl7_to(peer.port))
    start = utcnow()

    assert deliver_due(sessions, storage, now=start) == {"pending": 1}
    message = message_of(sessions, result_id)
    assert message.attempts == 1 and "'AE'" in message.last_error
    assert abs((message.next_attempt_at.replace(tzinfo=None) - start.replace(tzinfo=None))
               - timedelta(seconds=30)) < timedelta(seconds=1)
    assert deliver_due(sessions, storage, now=start + timedelta(seconds=20)) == {}  # not due yet
    assert deliver_due(sessions, storage, now=start + timedelta(seconds=31)) == {"sent": 1}
    assert len(peer.received) == 2 and len(set(peer.control_ids())) == 1  # a retry is the same message


def test_a_silent_ris_times_out_and_the_next_attempt_goes_through(sessions, storage, ris, quick):
    peer = ris("silent", "AA")
    result_id = add_result(sessions, hl7_to(peer.port))
    start = utcnow()

    assert deliver_due(sessions, storage, now=start) == {"pending": 1}
    assert "no ACK" in message_of(sessions, result_id).last_error
    assert deliver_due(sessions, storage, now=start + timedelta(seconds=31)) == {"sent": 1}


def test_failed_after_the_last_attempt_then_retry_sends_it(sessions, storage, ris):
    closed = free_port()  # nothing listens there
    result_id = add_result(sessions, hl7_to(closed))
    now = utcnow()
    for attempt in range(1, MAX_ATTEMPTS + 1):
        outcome = deliver_due(sessions, storage, now=now)
        assert outcome == ({"failed": 1} if attempt == MAX_ATTEMPTS else {"pending": 1}), attempt
        now += backoff(attempt) + timedelta(seconds=1)
    message = message_of(sessions, result_id)
    assert (message.state, message.attempts) == ("failed", MAX_ATTEMPTS) and "cannot reach" in message.last_error
    assert deliver_due(sessions, storage, now=now + timedelta(days=1)) == {}

    peer = ris("AA")
    with sessions.begin() as session:
        session.scalar(select(Department)).outbound = check_config(hl7_to(peer.port))
        retry(session, message.id, None, "test")
    assert deliver_due(sessions, storage) == {"sent": 1}
    assert message_of(sessions, result_id).attempts == 1 and len(peer.received) == 1


def test_one_bad_destination_does_not_stop_the_others(sessions, storage, ris):
    peer = ris("AA")
    result_id = add_result(sessions, hl7_to(peer.port) | {"fhir": {"url": f"http://127.0.0.1:{free_port()}/fhir"}})
    assert deliver_due(sessions, storage) == {"sent": 1, "pending": 1}
    assert "cannot reach the FHIR server" in message_of(sessions, result_id, "fhir").last_error


def test_a_report_goes_to_the_fhir_server_as_a_conditional_update(sessions, storage):
    server = FhirPeer(token="tok-1")
    try:
        result_id = add_result(sessions, {"fhir": {"url": server.url, "token": "tok-1"}}, status="preliminary",
                               flags=["near_threshold"])
        assert deliver_due(sessions, storage) == {"sent": 1}
        new_version(sessions, result_id, "final")
        assert deliver_due(sessions, storage) == {"sent": 1}
    finally:
        server.close()
    first, second = server.requests
    assert "invalid" not in first and "invalid" not in second
    assert first["path"] == "/fhir/DiagnosticReport"
    identifier = [f"urn:pneumoscreen:study-result|{result_id}"]
    assert first["query"]["identifier"] == second["query"]["identifier"] == identifier
    assert first["headers"]["Authorization"] == "Bearer tok-1"
    assert first["headers"]["Content-Type"] == "application/fhir+json"
    assert (first["report"].status, second["report"].status) == ("preliminary", "final")
    assert second["body"]["meta"]["versionId"] == "2"


def test_a_fhir_server_error_is_retried_with_its_reason(sessions, storage):
    server = FhirPeer(statuses=(500, None))
    try:
        result_id = add_result(sessions, {"fhir": {"url": server.url}})
        start = utcnow()
        assert deliver_due(sessions, storage, now=start) == {"pending": 1}
        error = message_of(sessions, result_id, "fhir").last_error
        assert "answered 500" in error and "the store is down" in error
        assert deliver_due(sessions, storage, now=start + timedelta(seconds=31)) == {"sent": 1}
    finally:
        server.close()
    assert "Authorization" not in server.requests[-1]["headers"] and "invalid" not in server.requests[-1]


def test_versions_go_in_order_and_a_lost_deliverer_is_replaced_after_its_lease(sessions, storage, ris):
    peer = ris("AA")
    result_id = add_result(sessions, hl7_to(peer.port), status="preliminary")
    with sessions.begin() as session:  # a deliverer took version 1 and died mid-send
        message = session.scalars(select(OutboundMessage)).one()
        message.state, message.attempts, message.next_attempt_at = "sending", 1, utcnow() + LEASE
    new_version(sessions, result_id, "final")

    assert deliver_due(sessions, storage) == {}  # version 2 waits while version 1 may still be on its way
    later = utcnow() + LEASE + timedelta(seconds=1)
    assert deliver_due(sessions, storage, now=later) == {"superseded": 1}
    assert deliver_due(sessions, storage, now=later) == {"sent": 1}
    assert [str(m.segment("OBR")[25]) for m in peer.received] == ["F"]
    assert message_of(sessions, result_id, version=1).state == "superseded"


def test_a_sent_final_report_is_followed_by_its_amendment(sessions, storage, ris):
    peer = ris("AA")
    result_id = add_result(sessions, hl7_to(peer.port), status="final")
    assert deliver_due(sessions, storage) == {"sent": 1}
    new_version(sessions, result_id, "amended", call="NORMAL", probability=0.2)
    assert deliver_due(sessions, storage) == {"sent": 1}
    assert [str(m.segment("OBR")[25]) for m in peer.received] == ["F", "C"]
    [call] = [obx for obx in peer.received[1].segments("OBX") if str(obx[3][0][0]) == "pneumonia-call"]
    assert str(call[5]) == "17621005^Normal^SCT"


def test_a_message_whose_destination_was_removed_fails_with_the_reason(sessions, storage, ris):
    result_id = add_result(sessions, hl7_to(ris("AA").port))
    with sessions.begin() as session:
        session.scalar(select(Department)).outbound = None
    assert deliver_due(sessions, storage) == {"failed": 1}
    assert message_of(sessions, result_id).last_error == "the department no longer sends hl7"


def test_two_deliverers_at_once_never_send_one_message_twice(sessions, storage, ris):
    peer = ris("AA", delay=0.02)
    for n in range(24):
        add_result(sessions, hl7_to(peer.port), accession_number=f"A{n}")
    outcomes, barrier = [], threading.Barrier(2)

    def deliverer():
        barrier.wait()
        outcomes.append(deliver_due(sessions, storage, limit=100))

    threads = [threading.Thread(target=deliverer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sum(outcome.get("sent", 0) for outcome in outcomes) == 24
    assert sum(outcome.get("skipped", 0) for outcome in outcomes) > 0  # they did run at once
    ids = peer.control_ids()
    assert len(ids) == 24 and len(set(ids)) == 24
    with sessions() as session:
        assert set(session.scalars(select(OutboundMessage.state))) == {"sent"}
        assert set(session.scalars(select(OutboundMessage.attempts))) == {1}


def test_the_delivery_thread_sends_what_is_queued(sessions, storage, ris):
    peer = ris("AA")
    stop = start_delivery(SimpleNamespace(sessions=sessions, storage=storage), every=0.1)
    try:
        result_id = add_result(sessions, hl7_to(peer.port))
        wait_until(lambda: message_of(sessions, result_id).state == "sent", "the thread to deliver", timeout=20)
    finally:
        stop.set()
    assert len(peer.received) == 1
