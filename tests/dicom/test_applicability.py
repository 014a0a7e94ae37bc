"""Applicability at the door: screen chest radiographs, accept and ignore other objects, refuse with a status;
through the rules, the upload API and the real DICOM listener (pynetdicom as the sending PACS)."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import (
    BasicTextSRStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    RTPlanStorage,
)
from sqlalchemy import select

from core.services import services_of
from core.settings import ConfigError, DicomCaller, routing_rules
from db.models import Study
from models.dicom import decode_dicom
from pneumoscreen.app import create_app
from pneumoscreen.dicom_listen import Listener
from studies.files import expand, walk
from tests.dicom.factory import chest_pixels, dataset, to_bytes
from tests.helpers import bearer, free_port, png_bytes, zip_bytes

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def colour_capture() -> Dataset:
    """An RGB Secondary Capture (a dose screen, a photo): valid colour pixels."""
    ds = dataset(chest_pixels(64, 64), modality="OT")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = np.full((64, 64, 3), 128, np.uint8).tobytes()
    return ds


def no_pixels(sop_class: str, modality: str) -> Dataset:
    """A non-image object (structured report, RT plan...): header only."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), modality
    return ds


CASES = {
    "CR chest": (dataset(chest_pixels()), "screen", None),
    "DX without body part": (dataset(chest_pixels(), modality="DX", BodyPartExamined=""), "screen", None),
    "adult lateral CR (screened, flagged by scope)": (dataset(chest_pixels(), view="LL", PatientAge="054Y"),
                                                      "screen", None),
    "CT": (dataset(chest_pixels(), modality="CT"), "ignore", "modality is not a projection radiograph"),
    "MR": (dataset(chest_pixels(), modality="MR"), "ignore", "modality is not a projection radiograph"),
    "SKULL": (dataset(chest_pixels(), BodyPartExamined="SKULL"), "ignore", "body part is not the chest"),
    "For Processing DX": (dataset(chest_pixels(), modality="DX", PresentationIntentType="FOR PROCESSING"),
                          "ignore", "For Processing"),
    "colour": (colour_capture(), "ignore", "colour image"),
    "structured report": (no_pixels(BasicTextSRStorage, "SR"), "ignore", "no image"),
    "RT plan": (no_pixels(RTPlanStorage, "RTPLAN"), "ignore", "no image"),
    "private SOP class": (no_pixels("1.2.3.4.5.6.7", "OT"), 0x0122, "not a DICOM storage SOP class"),
    "CR image without pixels": (no_pixels(ComputedRadiographyImageStorage, "CR"), 0xA900, "without pixel data"),
    "tiny CR": (dataset(chest_pixels(20, 20)), 0xC000, "too small for a chest film"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_object_is_screened_ignored_or_refused_with_its_reason(case):
    ds, outcome, reason = CASES[case]
    [item] = expand("x.dcm", to_bytes(ds))
    if outcome == "screen":
        assert item.error is None and item.not_applicable is None and item.meta.modality == ds.Modality
    elif outcome == "ignore":
        assert item.error is None and reason in item.not_applicable and item.data and item.meta is not None
    else:
        assert item.dicom_status == outcome and reason in item.error and item.not_applicable is None


def test_a_png_upload_is_not_routed():
    [item] = expand("film.png", png_bytes(chest_pixels(64, 64).astype(np.uint8)))
    assert (item.error, item.not_applicable, item.dicom_status, item.meta) == (None, None, None, None)


def _rules(tmp_path, rules) -> str:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))
    return str(path)


def test_site_rules_come_first(tmp_path):
    rules = routing_rules(_rules(tmp_path, [
        {"age_from": 16, "action": "ignore", "reason": "adult: children only here"},
        {"modality": ["CT"], "action": "screen"},
        {"sop_class": [RTPlanStorage], "action": "refuse", "reason": "no RT plans here"}]))
    adult = dataset(chest_pixels(), PatientAge="040Y")
    assert "adult: children only here" in next(expand("a.dcm", to_bytes(adult), rules)).not_applicable
    assert next(expand("c.dcm", to_bytes(dataset(chest_pixels(), PatientAge="004Y")), rules)).not_applicable is None
    assert next(expand("ct.dcm", to_bytes(dataset(chest_pixels(), modality="CT")), rules)).not_applicable is None
    plan = next(expand("p.dcm", to_bytes(no_pixels(RTPlanStorage, "RTPLAN")), rules))
    assert plan.dicom_status == 0x0122 and "no RT plans here" in plan.error


def test_site_rules_apply_to_files_on_disk_too(tmp_path):
    """`pneumoscreen screen` reads folders through walk(): the site's rules route those files as they route
    uploads (walk once dropped them, and an adult film was screened where the site ignores adults)."""
    rules = routing_rules(_rules(tmp_path, [{"age_from": 16, "action": "ignore", "reason": "children only"}]))
    folder = tmp_path / "films"
    folder.mkdir()
    (folder / "adult.dcm").write_bytes(to_bytes(dataset(chest_pixels(), PatientAge="040Y")))
    (folder / "child.dcm").write_bytes(to_bytes(dataset(chest_pixels(), PatientAge="004Y")))
    items = {Path(item.name).name: item for item in walk([folder], rules)}
    assert items["adult.dcm"].not_applicable.startswith("children only (")
    assert items["child.dcm"].not_applicable is None and items["child.dcm"].error is None


@pytest.mark.parametrize("rules, message", [
    ("{not json", "not valid JSON"),
    ({"action": "screen"}, "JSON list"),
    ([{"action": "keep"}], "action must be screen, ignore or refuse"),
    ([{"action": "ignore"}], "needs a reason"),
    ([{"action": "screen", "reason": "x"}], "takes no reason"),
    ([{"action": "refuse", "reason": "x", "status": "0xA700"}], "status is for refuse rules only"),
    ([{"action": "screen", "modalty": ["CR"]}], "unknown key(s) modalty"),
    ([{"action": "screen", "modality": "CR"}], "modality must be a non-empty list"),
    ([{"action": "screen", "sop_class": ["CTImageStorage"]}], "is not a UID"),
    ([{"action": "screen", "age_from": "16"}], "age_from must be a number"),
    ([{"action": "screen", "colour": "yes"}], "colour must be true or false"),
])
def test_bad_routing_rules_are_refused_at_boot(tmp_path, rules, message):
    path = tmp_path / "rules.json"
    path.write_text(rules if isinstance(rules, str) else json.dumps(rules))
    with pytest.raises(ConfigError, match="PNEUMOSCREEN_ROUTING_RULES") as raised:
        routing_rules(str(path))
    assert message in str(raised.value)
    with pytest.raises(ConfigError, match="cannot read"):
        routing_rules(str(tmp_path / "missing.json"))


def test_upload_stores_ignored_objects_as_done_and_never_queues_them(app, users, monkeypatch):
    services = services_of(app)
    queued = []
    monkeypatch.setattr(services, "enqueue", queued.extend)
    films = {"cr.dcm": dataset(chest_pixels()), "ct.dcm": dataset(chest_pixels(), modality="CT"),
             "sr.dcm": no_pixels(BasicTextSRStorage, "SR"), "tiny.dcm": dataset(chest_pixels(20, 20))}
    upload = zip_bytes({name: to_bytes(ds) for name, ds in films.items()}
                       | {"film.png": png_bytes(chest_pixels(64, 64).astype(np.uint8))})
    response = app.test_client().post("/api/v1/batches", data={"files": [(io.BytesIO(upload), "study.zip")]},
                                      headers=bearer(users["uploader"]), content_type="multipart/form-data")
    assert response.status_code == 202, response.get_json()
    [rejected] = response.get_json()["rejected"]
    assert rejected["filename"].endswith("tiny.dcm") and "too small" in rejected["error"]
    with services.sessions() as session:
        rows = {row.filename.split("/")[-1]: row for row in session.scalars(select(Study)).all()}
        assert set(rows) == {"cr.dcm", "ct.dcm", "sr.dcm", "film.png"}
        assert sorted(queued) == sorted([rows["cr.dcm"].id, rows["film.png"].id])
        for name in ("ct.dcm", "sr.dcm"):
            row = rows[name]
            assert row.status == "done" and row.prediction is None and row.flag is None
            assert row.not_applicable and row.finished_at is not None
        assert "modality is not a projection radiograph" in rows["ct.dcm"].not_applicable
        assert rows["cr.dcm"].status == "queued" and rows["cr.dcm"].not_applicable is None
        assert rows["film.png"].not_applicable is None


@pytest.fixture
def listener(settings, tmp_path):
    rules = routing_rules(_rules(tmp_path, [{"sop_class": [RTPlanStorage], "action": "refuse",
                                             "reason": "RT plans are not screened: do not route them here"}]))
    app = create_app(settings=settings.with_overrides({"routing_rules": rules}))
    scp = Listener(services_of(app), "PNEUMOTEST", free_port(), "127.0.0.1", quiet_s=3600,
                   callers=(DicomCaller("PACS", "Radiology"),))
    scp.start(block=False)
    yield scp
    scp.stop()
    services_of(app).engine.dispose()


def _pacs(*contexts) -> AE:
    ae = AE(ae_title="PACS")
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    return ae


def test_listener_accepts_and_ignores_what_is_not_a_chest_film_and_refuses_with_a_reason(listener):
    ae = _pacs((ComputedRadiographyImageStorage, [ExplicitVRLittleEndian]),
               (DigitalXRayImageStorageForPresentation, [ExplicitVRLittleEndian]),
               (BasicTextSRStorage, [ExplicitVRLittleEndian]), (RTPlanStorage, [ExplicitVRLittleEndian]))
    report, plan = no_pixels(BasicTextSRStorage, "SR"), no_pixels(RTPlanStorage, "RTPLAN")
    skull = dataset(chest_pixels(), BodyPartExamined="SKULL")
    raw = dataset(chest_pixels(), modality="DX", PresentationIntentType="FOR PROCESSING")
    raw.SOPClassUID = raw.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    film, tiny = dataset(chest_pixels()), dataset(chest_pixels(20, 20))
    assoc = ae.associate("127.0.0.1", listener.address[1], ae_title="PNEUMOTEST")
    assert assoc.is_established
    try:
        assert [assoc.send_c_store(ds).Status for ds in (film, report, skull, raw)] == [0x0000] * 4
        refused = assoc.send_c_store(plan)
        assert refused.Status == 0x0122 and refused.ErrorComment.startswith("RT plans are not screened")
        too_small = assoc.send_c_store(tiny)
        assert too_small.Status == 0xC000 and "too small" in too_small.ErrorComment
        assert len(too_small.ErrorComment) <= 64
    finally:
        assoc.release()
    listener.flush(force=True)
    with listener.services.sessions() as session:
        rows = {row.sop_instance_uid: row for row in session.scalars(select(Study)).all()}
    assert set(rows) == {film.SOPInstanceUID, report.SOPInstanceUID, skull.SOPInstanceUID, raw.SOPInstanceUID}
    assert rows[film.SOPInstanceUID].status == "queued" and rows[film.SOPInstanceUID].not_applicable is None
    assert "no image" in rows[report.SOPInstanceUID].not_applicable
    assert "body part is not the chest" in rows[skull.SOPInstanceUID].not_applicable
    assert "For Processing" in rows[raw.SOPInstanceUID].not_applicable
    assert all(rows[uid].status == "done" for uid in (report.SOPInstanceUID, skull.SOPInstanceUID))


def test_listener_prefers_a_lossless_transfer_syntax(listener):
    ae = _pacs((ComputedRadiographyImageStorage, [JPEGBaseline8Bit, JPEGLosslessSV1, ExplicitVRLittleEndian]),
               (DigitalXRayImageStorageForPresentation, [JPEGBaseline8Bit, JPEG2000, JPEG2000Lossless]),
               (BasicTextSRStorage, [JPEGBaseline8Bit]))
    assoc = ae.associate("127.0.0.1", listener.address[1], ae_title="PNEUMOTEST")
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax): cx.transfer_syntax[0] for cx in assoc.accepted_contexts}
    finally:
        assoc.release()
    assert accepted[ComputedRadiographyImageStorage] == ExplicitVRLittleEndian
    assert accepted[DigitalXRayImageStorageForPresentation] == JPEG2000Lossless
    assert accepted[BasicTextSRStorage] == JPEGBaseline8Bit  # lossy only when nothing else is offered


def test_a_hostile_header_is_answered_at_the_door_and_what_passes_decodes(recwarn):
    """Random bytes changed in a header: each file is screened, ignored or refused with a reason at the door,
    never an exception; what the door lets through de-identifies and decodes, or fails as that film alone.
    The UIDs are fixed: generated ones differ in length now and then, which moves every byte the fuzz changes."""
    import random

    from models.dicom import deidentify
    from worker.pipeline import _decode

    uids = {"study_uid": "1.2.826.0.1.3680043.8.498.1", "SeriesInstanceUID": "1.2.826.0.1.3680043.8.498.2",
            "SOPInstanceUID": "1.2.826.0.1.3680043.8.498.3"}
    base = to_bytes(dataset(chest_pixels(40, 40), WindowCenter=100, WindowWidth=200, **uids))
    header_end, rng, passed = base.index(b"\xe0\x7f\x10\x00"), random.Random(2), 0
    for _ in range(300):
        data = bytearray(base)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(132, header_end)] = rng.randrange(256)
        item = next(expand("hostile.dcm", bytes(data)))
        assert (item.error is None) == (item.dicom_status is None)
        if item.error is None and item.not_applicable is None:
            passed += 1
            assert _decode(deidentify(item.data)).error is None
    assert 50 < passed < 300


@pytest.mark.parametrize("change, reason", [
    (lambda ds: setattr(ds, "PixelData", ds.PixelData[:100]), "pixel data is truncated"),
    (lambda ds: setattr(ds, "BitsStored", 20), "pixel description is invalid"),
    (lambda ds: setattr(ds, "PixelRepresentation", 7), "pixel description is invalid"),
    (lambda ds: ds.__delattr__("PixelRepresentation"), "lacks PixelRepresentation"),
    (lambda ds: setattr(ds, "BitsAllocated", 12), "pixel description is invalid"),
])
def test_broken_pixel_descriptions_are_refused_at_the_door(change, reason):
    ds = dataset(chest_pixels())
    change(ds)
    [item] = expand("broken.dcm", to_bytes(ds))
    assert item.dicom_status == 0xC000 and reason in item.error


def test_an_empty_window_is_no_window():
    pixels = chest_pixels()
    [item] = expand("empty.dcm", to_bytes(dataset(pixels, WindowCenter=None, WindowWidth=None)))
    assert item.error is None
    expected = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    np.testing.assert_allclose(decode_dicom(item.data), expected, atol=1e-6)


def test_an_unknown_transfer_syntax_is_refused_at_the_door():
    data = to_bytes(dataset(chest_pixels())).replace(b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.9.9.9\x00")
    [item] = expand("syntax.dcm", data)
    assert item.dicom_status == 0xC000 and "unknown transfer syntax '1.2.840.10008.9.9.9'" in item.error


@pytest.mark.parametrize("modality", ["CR", "CT"])  # screened, and accepted and ignored
def test_a_dicom_file_is_parsed_once_at_the_door(monkeypatch, modality):
    """Header facts, routing and the image check share one parse (each used to read the file again)."""
    import pydicom

    calls = []
    real = pydicom.dcmread
    monkeypatch.setattr(pydicom, "dcmread", lambda *args, **kwargs: calls.append(1) or real(*args, **kwargs))
    item = next(expand("film.dcm", to_bytes(dataset(chest_pixels(), modality=modality))))
    assert item.error is None and item.meta.modality == modality
    assert (item.not_applicable is None) == (modality == "CR")
    assert len(calls) == 1
