"""A StudyInstanceUID is no secret: another department's upload carrying it never joins, changes or reveals a
department's DICOM study (grouping, scope flags, study result, FHIR)."""
from pydicom.uid import generate_uid
from sqlalchemy import select

from core.services import services_of
from db.accounts import create_user, ensure_department, issue_token
from db.models import Study
from studies.files import expand
from studies.intake import submit_batch
from tests.dicom.factory import chest_pixels, dataset, to_bytes
from tests.helpers import StubScreener, bearer
from worker import pipeline


def _send(services, user_id: int, name: str, data: bytes) -> int:
    batch, _ = submit_batch(services, list(expand(name, data)), user_id, "api")
    with services.sessions() as session:
        study_id = session.scalar(select(Study.id).where(Study.batch_id == batch.id))
    pipeline.run_batch(services.sessions, services.storage, StubScreener(), [study_id])
    return study_id


def test_a_foreign_frontal_film_does_not_join_a_departments_study(app):
    services = services_of(app)
    with services.sessions.begin() as session:
        users, tokens = {}, {}
        for name in ("A", "B"):
            user = create_user(session, f"up-{name}", "uploader", None,
                               department_id=ensure_department(session, f"Ward {name}").id)
            users[name], tokens[name] = user.id, issue_token(session, user)
    uid = generate_uid()
    # B sends a frontal film with A's study UID first; then A's own lateral-only study arrives.
    theirs = _send(services, users["B"], "frontal.dcm", to_bytes(dataset(chest_pixels(), view="PA", study_uid=uid)))
    ours = _send(services, users["A"], "lateral.dcm", to_bytes(dataset(chest_pixels(), view="LL", study_uid=uid)))

    with services.sessions() as session:
        lateral = session.get(Study, ours)
        assert lateral.flag is not None and lateral.flag.reasons == ["out_of_scope"]
        result = lateral.study_result
        assert [image.id for image in result.images] == [ours] and result.scope == "out_of_scope"
        assert result.call is None
        assert [image.id for image in session.get(Study, theirs).study_result.images] == [theirs]
    client = app.test_client()
    report = client.get(f"/api/v1/studies/{theirs}/fhir", headers=bearer(tokens["B"])).get_json()
    assert f"image {ours}" not in report["conclusion"]
    assert client.get(f"/api/v1/studies/{ours}/fhir", headers=bearer(tokens["B"])).status_code == 404
