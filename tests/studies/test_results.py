"""One result per radiology study: grouping by StudyInstanceUID within a department, the call from the frontal
films whatever order they arrive in, report statuses and versions, FHIR per study, re-sent studies."""
from dataclasses import replace
from datetime import datetime, timezone

from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from sqlalchemy import select

from core.services import services_of
from db.accounts import create_user, ensure_department, issue_token
from db.models import Department, FlagStatus, ReviewFlag, Study, StudyResult, User
from studies.fhir import diagnostic_report
from studies.files import expand
from studies.intake import submit_batch
from studies.outbound import set_config
from studies.reviews import record_decision
from tests.dicom.factory import chest_pixels, dataset, to_bytes
from tests.helpers import StubScreener, bearer, chest_film
from worker import pipeline

UID = "1.2.826.0.1.3680043.8.498.1"


class _CalmScreener(StubScreener):
    """NORMAL without a flag of the model's own, PNEUMONIA (0.9) for a film with an opacity."""

    def _finding(self, image):
        return replace(super()._finding(image), reasons=())


def _film(view: str | None = "PA", uid: str = UID, opacity: bool = False, **extra) -> bytes:
    pixels = chest_pixels()
    if opacity:  # the right-hand lung field bright: the stub calls it PNEUMONIA
        rows, cols = pixels.shape
        pixels[int(rows * 0.55):int(rows * 0.75), int(cols * 0.6):int(cols * 0.8)] = 4095
    return to_bytes(dataset(pixels, view=view, study_uid=uid, **extra))


def _send(services, user_id: int, films: dict[str, bytes], screener=None) -> list[int]:
    """Upload films as one batch and screen them; returns the image ids."""
    batch, rejected = submit_batch(services, [item for name, data in films.items() for item in expand(name, data)],
                                   user_id, "api")
    assert not rejected
    with services.sessions() as session:
        ids = session.scalars(select(Study.id).where(Study.batch_id == batch.id).order_by(Study.id)).all()
    pipeline.run_batch(services.sessions, services.storage, screener or _CalmScreener(), ids)
    return ids


def _result(services, image_id: int) -> StudyResult:
    with services.sessions() as session:
        result = session.get(Study, image_id).study_result
        result.images  # loaded for use after the session
        return result


def _department_user(services, department: str, role: str = "uploader") -> int:
    with services.sessions.begin() as session:
        dept = ensure_department(session, department)
        return create_user(session, f"{role}-{department.lower()}", role, None, department_id=dept.id).id


def test_a_lateral_that_arrives_first_is_withdrawn_when_the_frontal_is_read(app):
    services = services_of(app)
    user = _department_user(services, "North")
    [lateral] = _send(services, user, {"lateral.dcm": _film("LL")})
    with services.sessions() as session:
        assert session.get(Study, lateral).flag.reasons == ["out_of_scope"]
    first = _result(services, lateral)
    assert (first.scope, first.status, first.call) == ("out_of_scope", "preliminary", None)

    [frontal] = _send(services, user, {"frontal.dcm": _film("PA")})
    with services.sessions() as session:
        assert session.get(Study, lateral).flag is None  # the frontal film now speaks for the study
        report = DiagnosticReport.model_validate(diagnostic_report(session, session.get(Study, frontal).study_result))
    result = _result(services, frontal)
    assert result.id == first.id and [image.id for image in result.images] == [lateral, frontal]
    assert (result.scope, result.call, result.decided_by_image_id) == ("in_scope", "NORMAL", frontal)
    assert result.status == "final" and result.version > first.version
    assert report.status == "final" and report.conclusionCode[0].coding[0].code == "17621005"


def test_report_statuses_and_versions_follow_the_study(app):
    services = services_of(app)
    user = _department_user(services, "North")
    film = _film("PA", AccessionNumber="ACC-0042", StudyDate="20261103", StudyTime="101500",
                 AcquisitionDate="20261103", AcquisitionTime="101733", TimezoneOffsetFromUTC="+0200")
    batch, _ = submit_batch(services, list(expand("frontal.dcm", film)), user, "api")
    with services.sessions() as session:
        [frontal] = session.scalars(select(Study.id).where(Study.batch_id == batch.id)).all()
    registered = _result(services, frontal)
    assert (registered.status, registered.version, registered.accession_number) == ("registered", 1, "ACC-0042")

    pipeline.run_batch(services.sessions, services.storage, StubScreener(), [frontal])  # NORMAL, flagged
    with services.sessions() as session:
        result = session.get(Study, frontal).study_result
        body = diagnostic_report(session, result)
    report = DiagnosticReport.model_validate(body)
    assert (report.status, report.meta.versionId) == ("preliminary", "2")
    assert body["basedOn"][0]["identifier"]["value"] == "ACC-0042"
    assert body["basedOn"][0]["identifier"]["type"]["coding"][0]["code"] == "ACSN"
    assert datetime.fromisoformat(body["effectiveDateTime"]) == datetime(2026, 11, 3, 8, 17, 33, tzinfo=timezone.utc)
    assert body["code"]["coding"][0] == {"system": "http://loinc.org", "code": "36554-4",
                                         "display": "XR Chest Single view"}

    with services.sessions.begin() as session:
        reviewer = create_user(session, "reader", "reviewer", None).id
    statuses = []
    for decision in ("normal", "pneumonia"):
        with services.sessions.begin() as session:
            record_decision(session, session.get(Study, frontal), reviewer, decision, "")
        with services.sessions() as session:
            result = session.get(Study, frontal).study_result
            body = diagnostic_report(session, result)
            code = body["conclusionCode"][-1]["coding"][0]["code"]
            statuses.append((body["status"], body["meta"]["versionId"], code))
    assert statuses == [("final", "3", "17621005"), ("corrected", "4", "233604007")]

    # A lateral of the same study changes nothing reported; a second frontal film with an opacity does.
    _send(services, user, {"lateral.dcm": _film("LL", AccessionNumber="ACC-0042")})
    assert _result(services, frontal).version == 4
    [second] = _send(services, user, {"frontal2.dcm": _film("AP", opacity=True)})
    amended = _result(services, frontal)
    assert (amended.status, amended.version, amended.call, amended.decided_by_image_id) == \
        ("amended", 5, "PNEUMONIA", second)
    with services.sessions() as session:
        assert DiagnosticReport.model_validate(diagnostic_report(session, session.get(StudyResult, amended.id))) \
            .code.coding[0].code == "30745-4"


def test_out_of_scope_report_carries_no_pneumonia_code(app):
    services = services_of(app)
    user = _department_user(services, "North")
    [adult] = _send(services, user, {"adult.dcm": _film("PA", opacity=True, PatientAge="045Y")})
    with services.sessions() as session:
        body = diagnostic_report(session, session.get(Study, adult).study_result)
    DiagnosticReport.model_validate(body)
    assert body["status"] == "preliminary" and "Out of scope" in body["conclusion"]
    assert "233604007" not in str(body) and "conclusionCode" not in body


def test_a_resent_decided_study_keeps_its_decision_and_opens_no_flag(app):
    services = services_of(app)
    user = _department_user(services, "North")
    film = _film("PA")
    [first] = _send(services, user, {"a.dcm": film}, StubScreener())
    with services.sessions.begin() as session:
        reviewer = create_user(session, "reader", "reviewer", None).id
        record_decision(session, session.get(Study, first), reviewer, "pneumonia", "consolidation left base")
    version = _result(services, first).version
    [again] = _send(services, user, {"a-again.dcm": film}, StubScreener())
    with services.sessions() as session:
        copy = session.get(Study, again)
        assert copy.duplicate_of_id == first and copy.flag.status == FlagStatus.CLOSED
        assert (copy.flag.latest.decision, copy.flag.latest.note) == ("pneumonia", "consolidation left base")
        open_flags = session.scalars(select(ReviewFlag).where(ReviewFlag.status == FlagStatus.OPEN)).all()
        assert open_flags == []
        assert copy.study_result_id == session.get(Study, first).study_result_id
    assert _result(services, first).version == version  # nothing new to report, nothing sent again


def test_departments_never_share_a_study_and_the_api_finds_each_its_own(app):
    services = services_of(app)
    north, south = _department_user(services, "North"), _department_user(services, "South")
    with services.sessions.begin() as session:  # North's results go to its RIS's FHIR server
        set_config(session, session.scalar(select(Department).where(Department.name == "North")),
                   {"fhir": {"url": "https://fhir.north.example/fhir"}}, None, "test")
    [n_image] = _send(services, north, {"n.dcm": _film("PA", AccessionNumber="N1")})
    [s_image] = _send(services, south, {"s.dcm": _film("PA", AccessionNumber="S1")})
    n_result, s_result = _result(services, n_image), _result(services, s_image)
    assert n_result.id != s_result.id and n_result.study_instance_uid == s_result.study_instance_uid == UID

    with services.sessions.begin() as session:
        token = {user_id: issue_token(session, session.get(User, user_id), "test") for user_id in (north, south)}
    client = app.test_client()
    found = client.get(f"/api/v1/results?study_instance_uid={UID}", headers=bearer(token[north])).get_json()
    assert [item["id"] for item in found["items"]] == [n_result.id] and found["items"][0]["accession_number"] == "N1"
    assert client.get("/api/v1/results?accession_number=S1", headers=bearer(token[north])).get_json()["total"] == 0
    assert client.get(f"/api/v1/results/{s_result.id}", headers=bearer(token[north])).status_code == 404
    assert client.get(f"/api/v1/results/{s_result.id}/fhir", headers=bearer(token[north])).status_code == 404
    own = client.get(f"/api/v1/results/{n_result.id}", headers=bearer(token[north])).get_json()
    assert own["call"] == "NORMAL" and own["images"][0]["id"] == n_image and own["updated_at"].endswith("+00:00")
    assert [(m["kind"], m["version"], m["state"]) for m in own["outbound"]] == [("fhir", own["version"], "pending")]
    assert client.get("/api/v1/results?study_instance_uid=1.2.x", headers=bearer(token[north])).status_code == 400
    assert client.get("/api/v1/results?accession_number=" + "9" * 17,
                      headers=bearer(token[north])).status_code == 400
    batches = client.get("/api/v1/batches?per_page=1", headers=bearer(token[north])).get_json()
    assert batches["total"] == 1 and batches["items"][0]["done"] == 1
    assert batches["items"][0]["created_at"].endswith("+00:00")
    fhir = client.get(f"/api/v1/studies/{n_image}/fhir", headers=bearer(token[north]))
    assert fhir.mimetype == "application/fhir+json" and fhir.get_json()["id"] == f"study-result-{n_result.id}"


def test_the_study_page_shows_the_report_and_where_it_was_sent(app):
    services = services_of(app)
    user = _department_user(services, "North")
    with services.sessions.begin() as session:
        set_config(session, session.scalar(select(Department).where(Department.name == "North")),
                   {"hl7": {"host": "ris.north.example", "port": 2575}}, None, "test")
        token = issue_token(session, create_user(session, "reader", "reviewer", None), "test")
    [image] = _send(services, user, {"a.dcm": _film("PA", AccessionNumber="ACC-7")}, StubScreener())  # flagged
    page = app.test_client().get(f"/review/{image}", headers=bearer(token)).get_data(as_text=True)
    assert "ACC-7" in page and "preliminary, version 2" in page
    row = '<td>HL7</td><td>2</td><td>mllp://ris.north.example:2575</td><td class="state-pending">pending</td>'
    assert row in page


def test_a_disputed_read_is_not_reported_until_the_third_reader_settles_it(app):
    services = services_of(app)
    user = _department_user(services, "North")
    [image] = _send(services, user, {"a.dcm": _film("PA")}, StubScreener())  # NORMAL, flagged near threshold
    with services.sessions.begin() as session:
        readers = [create_user(session, f"reader{n}", "reviewer", None).id for n in range(3)]
    reported = []
    for reader, decision in zip(readers, ("normal", "pneumonia", "pneumonia")):
        with services.sessions.begin() as session:
            record_decision(session, session.get(Study, image), reader, decision, "")
        result = _result(services, image)
        reported.append((result.status, result.version, result.review_decision))
    # The first read finalises; the second contradicts it (a third read opens, nothing new is reported);
    # the third settles it and corrects the report.
    assert reported == [("final", 3, "normal"), ("final", 3, "normal"), ("corrected", 4, "pneumonia")]


def test_one_chunk_of_mixed_films_keeps_each_image_with_its_own_study(app):
    """Two images of one study, a DICOM film without a StudyInstanceUID and a PNG, in one chunk: inserted as sets,
    each image still gets its own study result, with the header facts of its own file."""
    services = services_of(app)
    user = _department_user(services, "North")
    no_uid = dataset(chest_pixels(), AccessionNumber="ACC-ALONE", StudyDate="20261101")
    del no_uid.StudyInstanceUID
    films = {"frontal.dcm": _film("PA", AccessionNumber="ACC-1"), "alone.dcm": to_bytes(no_uid),
             "lateral.dcm": _film("LL", StudyDate="20261102"), "plain.png": chest_film(fmt="PNG")}
    batch, rejected = submit_batch(services, [item for name, data in films.items() for item in expand(name, data)],
                                   user, "api")
    assert not rejected
    with services.sessions() as session:
        images = {image.filename: image for image in session.scalars(select(Study).where(Study.batch_id == batch.id))}
        results = {name: image.study_result for name, image in images.items()}
        assert results["frontal.dcm"] is results["lateral.dcm"]
        assert len({result.id for result in results.values()}) == 3
        assert (results["frontal.dcm"].study_instance_uid, results["frontal.dcm"].accession_number,
                results["frontal.dcm"].study_date) == (UID, "ACC-1", "20261102")
        assert (images["alone.dcm"].accession_number, results["alone.dcm"].accession_number,
                results["alone.dcm"].study_date, results["alone.dcm"].study_instance_uid) == \
            ("ACC-ALONE", "ACC-ALONE", "20261101", None)
        assert (results["plain.png"].accession_number, images["plain.png"].modality) == (None, None)
        assert images["lateral.dcm"].view_position == "LL" and images["frontal.dcm"].view_position == "PA"
        assert {result.status for result in results.values()} == {"registered"}
