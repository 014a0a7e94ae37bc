"""DICOM SR and Secondary Capture of a study result made from a real film; both databases."""
import io
from datetime import UTC, timedelta, timezone

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import ComprehensiveSRStorage, SecondaryCaptureImageStorage

from core.services import services_of
from db.accounts import create_user
from db.models import OutboundMessage, OutboundState, Study, StudyResult
from studies import dicom_reports
from studies.dicom_reports import secondary_capture, structured_report, to_bytes
from tests.dicom.factory import chest_pixels, dataset
from tests.dicom.factory import to_bytes as film_bytes
from tests.studies.reported import reported_result

PNEUMONIA, NORMAL = "233604007", "17621005"


def round_trip(ds) -> pydicom.Dataset:
    """Written as a Part 10 file (file meta enforced) and read back, as a PACS would get it."""
    return pydicom.dcmread(io.BytesIO(to_bytes(ds)), force=False)


def content_items(ds):
    """Every content item of an SR tree, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def named(ds, code_value: str) -> list:
    return [item for item in content_items(ds) if item.ConceptNameCodeSequence[0].CodeValue == code_value]


@pytest.fixture
def services(app):
    return services_of(app)


def test_sr_and_sc_of_a_real_film_carry_the_call_in_the_original_study(services):
    result_id = reported_result(services)
    with services.sessions() as session:
        result = session.get(StudyResult, result_id)
        image = result.images[0]
        prediction, reasons = image.prediction, list(image.flag.reasons) if image.flag else []
        sr = round_trip(structured_report(session, services.storage, result))
        sc = round_trip(secondary_capture(session, services.storage, result))

    assert sr.SOPClassUID == ComprehensiveSRStorage and sr.Modality == "SR"
    assert sr.StudyInstanceUID == image.study_instance_uid == "1.3.6.1.4.1.5962.1.2.9.20040826185059.5457"
    assert sr.SeriesInstanceUID != image.series_instance_uid and sr.SOPInstanceUID != image.sop_instance_uid
    assert (sr.AccessionNumber, sr.StudyDate, sr.StudyTime) == ("exam Number", "20040826", "185059")
    assert (str(sr.PatientName), sr.PatientID, sr.PatientSex, sr.ReferringPhysicianName, sr.StudyID) == \
        ("", "", "F", "", "")
    assert "CompressedSamples" not in str(sr) and "9RG1" not in str(sr)  # the stored file's identity stays out
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("PARTIAL", "UNVERIFIED", "PRELIMINARY")
    [finding] = named(sr, "121071")
    assert finding.ConceptCodeSequence[0].CodeValue == {"PNEUMONIA": PNEUMONIA, "NORMAL": NORMAL}[prediction.prediction]
    [source] = finding.ContentSequence
    assert source.RelationshipType == "INFERRED FROM"
    assert source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.sop_instance_uid
    [probability] = named(sr, "122157")
    assert probability.MeasuredValueSequence[0].FloatingPointValue == pytest.approx(prediction.probability)
    [threshold] = named(sr, "122411")
    assert threshold.MeasuredValueSequence[0].FloatingPointValue == pytest.approx(prediction.threshold)
    assert [item.TextValue for item in named(sr, "111001") + named(sr, "111003")] == ["stub", "0.0.0+stub"]
    flagged = [item.TextValue for item in named(sr, "flag-reason")]
    assert reasons and [text.split(":")[0] for text in flagged] == reasons
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == image.study_instance_uid
    referenced = evidence.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == image.series_instance_uid
    assert referenced.ReferencedSOPSequence[0].ReferencedSOPClassUID == image.sop_class_uid
    assert referenced.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == image.sop_instance_uid
    parsed = hd.sr.ComprehensiveSR.from_dataset(sr)  # highdicom reads back its content tree
    assert parsed.content[0].name.value == "18748-4"

    assert sc.SOPClassUID == SecondaryCaptureImageStorage and sc.StudyInstanceUID == image.study_instance_uid
    assert sc.SeriesInstanceUID not in (sr.SeriesInstanceUID, image.series_instance_uid)
    assert (sc.AccessionNumber, sc.StudyDate, sc.StudyTime, sc.PatientSex) == ("exam Number", "20040826", "185059", "F")
    assert (sc.BurnedInAnnotation, sc.PhotometricInterpretation, sc.BitsAllocated) == ("YES", "RGB", 8)
    assert list(sc.PatientOrientation) == ["L", "F"]  # copied from the film's header
    assert sr.TimezoneOffsetFromUTC == sc.TimezoneOffsetFromUTC == "-0400"  # the film's zone covers StudyTime
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == image.sop_instance_uid
    assert "not a diagnosis" in sc.ImageComments
    pixels = sc.pixel_array
    assert pixels.shape == (sc.Rows, sc.Columns, 3) and max(sc.Rows, sc.Columns) >= dicom_reports.SC_SIDE
    film = pixels[: dicom_reports.SC_SIDE]  # a portrait film: its height is scaled to SC_SIDE, text below
    red = (film[..., 0].astype(int) - film[..., 2].astype(int)) > 60
    assert red.mean() > 0.02  # the heatmap is there, in colour
    band = pixels[dicom_reports.SC_SIDE:]
    assert (band > 150).any() and (band[..., 0].astype(int) - band[..., 2].astype(int) > 100).any()  # text, yellow


def test_out_of_scope_result_has_no_pneumonia_code_and_no_capture(services):
    result_id = reported_result(services, film="CR-MONO1-10-chest.dcm", scope="out_of_scope")
    with services.sessions() as session:
        result = session.get(StudyResult, result_id)
        sr = round_trip(structured_report(session, services.storage, result))
        assert secondary_capture(session, services.storage, result) is None  # no deciding image
        local = result.updated_at.replace(tzinfo=result.updated_at.tzinfo or UTC).astimezone()
    codes = {item.ConceptCodeSequence[0].CodeValue for item in content_items(sr) if "ConceptCodeSequence" in item}
    assert PNEUMONIA not in codes and NORMAL not in codes
    [finding] = named(sr, "121071")
    assert finding.ValueType == "TEXT" and "out of scope" in finding.TextValue
    assert not named(sr, "122157")  # no probability without a call
    assert sr.AccessionNumber == "FUJI95714" and sr.StudyTime == "" and sr.StudyDate == ""
    # The film names no zone: the site's local time, which is how DICOM reads a time without an offset.
    assert "TimezoneOffsetFromUTC" not in sr and sr.ContentTime == local.strftime("%H%M%S")


def test_times_are_in_the_films_zone_when_it_names_one(services):
    film = dataset(chest_pixels(), StudyDate="20261103", StudyTime="081733", TimezoneOffsetFromUTC="+0530")
    result_id = reported_result(services, film="zoned.dcm", data=film_bytes(film))
    with services.sessions() as session:
        result = session.get(StudyResult, result_id)
        sr = round_trip(structured_report(session, services.storage, result))
        sc = round_trip(secondary_capture(session, services.storage, result))
        updated = result.updated_at.replace(tzinfo=result.updated_at.tzinfo or UTC)
    local = updated.astimezone(timezone(timedelta(hours=5, minutes=30)))
    for ds in (sr, sc):
        assert (ds.TimezoneOffsetFromUTC, ds.StudyDate, ds.StudyTime) == ("+0530", "20261103", "081733")
        assert (ds.ContentDate, ds.ContentTime) == (local.strftime("%Y%m%d"), local.strftime("%H%M%S"))
    assert list(sc.PatientOrientation) == [] and "PatientOrientation" in sc  # unknown: empty, never guessed


def test_uids_are_deterministic_and_a_new_version_is_a_new_verified_instance(services):
    result_id = reported_result(services)
    with services.sessions() as session:
        result = session.get(StudyResult, result_id)
        first = to_bytes(structured_report(session, services.storage, result))
        assert to_bytes(structured_report(session, services.storage, result)) == first  # a retry: same bytes
        capture = secondary_capture(session, services.storage, result)
        assert secondary_capture(session, services.storage, result).SOPInstanceUID == capture.SOPInstanceUID
    v1 = pydicom.dcmread(io.BytesIO(first))

    with services.sessions.begin() as session:
        reviewer = create_user(session, "dr.who^x", "reviewer", None)
        result = session.get(StudyResult, result_id)
        result.version, result.status = 2, "final"  # final, no reviewer: complete, unverified
        session.add(OutboundMessage(study_result_id=result_id, kind="sr", result_version=1, destination="PACS",
                                    state=OutboundState.SENT))
        session.flush()
        v2 = round_trip(structured_report(session, services.storage, result))
        result.version, result.status = 3, "corrected"
        result.review_decision, result.reviewer_id = "pneumonia", reviewer.id
        v3 = round_trip(structured_report(session, services.storage, result))
        v3_capture = secondary_capture(session, services.storage, result)

    assert len({v1.SOPInstanceUID, v2.SOPInstanceUID, v3.SOPInstanceUID}) == 3
    assert v1.SeriesInstanceUID == v2.SeriesInstanceUID == v3.SeriesInstanceUID
    assert (v2.CompletionFlag, v2.VerificationFlag, v2.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "FINAL")
    assert (v3.CompletionFlag, v3.VerificationFlag) == ("COMPLETE", "VERIFIED")
    assert str(v3.VerifyingObserverSequence[0].VerifyingObserverName) == "dr.whox^"  # PN separators dropped
    assert "Reviewer decision: pneumonia" in [item.TextValue for item in named(v3, "121073")]
    assert [str(item.PersonName) for item in named(v3, "121008")] == ["dr.whox^"]  # the reviewer as observer
    # Both later versions name v1, the one SR that reached the PACS, as their predecessor.
    for later in (v2, v3):
        predecessor = later.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
        assert predecessor.ReferencedSOPInstanceUID == v1.SOPInstanceUID
    assert "PredecessorDocumentsSequence" not in v1
    assert v3_capture.SOPInstanceUID != capture.SOPInstanceUID and v3_capture.InstanceNumber == 3


def test_a_result_without_dicom_images_cannot_become_an_sr(services):
    result_id = reported_result(services)
    with services.sessions.begin() as session:
        result = session.get(StudyResult, result_id)
        lone = StudyResult(scope="in_scope", status="final")  # a PNG/JPEG image alone has no StudyInstanceUID
        session.add(lone)
        session.flush()
        with pytest.raises(ValueError, match="not a DICOM study"):
            structured_report(session, services.storage, lone)
        image = session.get(Study, result.images[0].id)
        image.sop_class_uid = None  # rows from before migration 0009 may lack it
        session.flush()
        session.refresh(result)
        with pytest.raises(ValueError, match="no image with SOP class"):
            structured_report(session, services.storage, result)
