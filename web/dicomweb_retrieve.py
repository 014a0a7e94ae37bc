"""DICOMweb retrieve (WADO-RS, PS3.18 10.4) of the DICOM originals a caller may see: instances, their metadata,
frames and rendered pictures of a study, series or instance.

Routes are on web.dicomweb_read's blueprint. Nothing is transcoded: instances go out as stored, frames as
uncompressed pixel data.
"""
import io
import json
import logging
import re

from flask import Response, request
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

from core.services import current_services
from db.models import Study, as_utc
from models.dicom import decode_dicom, read_dataset
from models.imaging import to_png
from models.limits import ImageDecodeError
from web.context import db_session
from web.dicomweb import choose, multipart, multipart_syntaxes
from web.dicomweb_read import BULK_VRS, accepted, bp, fail, instance_url, json_type, newest_copies, stored_header

logger = logging.getLogger(__name__)

EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"


def _images(study: str, series: str | None = None, instance: str | None = None) -> list[Study]:
    conditions = [Study.study_instance_uid == study]
    if series is not None:
        conditions.append(Study.series_instance_uid == series)
    if instance is not None:
        conditions.append(Study.sop_instance_uid == instance)
    rows = db_session().scalars(newest_copies(*conditions).order_by(Study.series_instance_uid, Study.id)).all()
    if not rows:
        fail(404, "no such " + ("instance" if instance else "series" if series else "study"))
    purged = [row for row in rows if row.original_purged_at is not None]
    if purged:  # retention (`pneumoscreen purge`): the results stay, the files are gone
        fail(410, f"{len(purged)} of {len(rows)} stored originals were purged by the retention policy (first on "
                  f"{as_utc(purged[0].original_purged_at):%Y-%m-%d}); their results remain in the API and FHIR")
    return rows


# ---- instances ----

@bp.get("/studies/<study>")
@bp.get("/studies/<study>/series/<series>")
@bp.get("/studies/<study>/series/<series>/instances/<instance>")
def retrieve(study: str, series: str | None = None, instance: str | None = None) -> Response:
    """The stored originals of a study, series or instance as multipart/related; type="application/dicom", in
    their stored transfer syntax (url_for picks the rule that takes the ids given)."""
    rows = _images(study, series, instance)
    syntaxes = multipart_syntaxes(accepted(), "application/dicom")
    if syntaxes is None:
        fail(406, 'instances are sent as multipart/related; type="application/dicom": accept that (or */*)')
    storage = current_services().storage
    if "*" not in syntaxes:  # a first look at the headers: refuse before any part is sent
        stored = {str(getattr(stored_header(storage, row), "file_meta", {}).get("TransferSyntaxUID")) for row in rows}
        refused = sorted(stored - syntaxes)
        if refused:
            fail(406, f"stored as transfer syntax {', '.join(refused)} and not transcoded here: ask for "
                      f"transfer-syntax={refused[0]} or transfer-syntax=*")

    def files():  # one original in memory at a time
        for row in rows:
            data, syntax = _part10(storage.get(row.storage_key))
            yield f"application/dicom; transfer-syntax={syntax}", data

    return multipart(files(), "application/dicom")


def _part10(data: bytes) -> tuple[bytes, str]:
    """A stored original as a Part 10 file and its transfer syntax; a bare data set gets preamble and file meta
    in front of its bytes, which stay as they are."""
    ds = read_dataset(data, pixels=False)
    syntax = str(ds.file_meta.TransferSyntaxUID)
    if data[128:132] == b"DICM":
        return data, syntax
    if data[:2] == b"\x02\x00":  # file meta without the preamble
        return b"\0" * 128 + b"DICM" + data, syntax
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = str(ds.get("SOPClassUID", "") or "")
    meta.MediaStorageSOPInstanceUID = str(ds.get("SOPInstanceUID", "") or "")
    meta.TransferSyntaxUID = syntax
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    write_file_meta_info(buffer, meta)
    return b"\0" * 128 + b"DICM" + buffer.getvalue() + data, syntax


# ---- metadata ----

@bp.get("/studies/<study>/metadata")
@bp.get("/studies/<study>/series/<series>/metadata")
@bp.get("/studies/<study>/series/<series>/instances/<instance>/metadata")
def metadata(study: str, series: str | None = None, instance: str | None = None) -> Response:
    """Each instance's header as DICOM JSON: bulk data left out, PixelData as a BulkDataURI to its frames."""
    rows = _images(study, series, instance)
    media, storage, found = json_type(), current_services().storage, []
    for row in rows:
        header = stored_header(storage, row)
        _drop_bulk(header)
        attributes = header.to_json_dict(suppress_invalid_tags=True)
        if "Rows" in header:
            frames = ",".join(str(n) for n in range(1, _frame_count(header) + 1))
            attributes["7FE00010"] = {"vr": "OW" if int(header.get("BitsAllocated", 16)) > 8 else "OB",
                                      "BulkDataURI": instance_url(row, f"/frames/{frames}")}
        found.append(attributes)
    return Response(json.dumps(found), mimetype=media)


def _drop_bulk(ds: Dataset) -> None:
    for element in list(ds):
        if element.VR == "SQ":
            for item in element.value:
                _drop_bulk(item)
        elif element.VR in BULK_VRS and element.value is not None and len(element.value) > 1024:
            del ds[element.tag]


def _frame_count(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


# ---- frames and rendered pictures ----

@bp.get("/studies/<study>/series/<series>/instances/<instance>/frames/<frames>")
def retrieve_frames(study: str, series: str, instance: str, frames: str):
    """Frames as uncompressed pixel data (explicit VR little endian), one part each, as PS3.18 8.7.3.3.2 has."""
    numbers = _frame_numbers(frames)
    syntaxes = multipart_syntaxes(accepted(), "application/octet-stream")
    if syntaxes is None or not syntaxes & {"*", EXPLICIT_LITTLE}:
        fail(406, f'frames are sent as multipart/related; type="application/octet-stream"; '
                  f"transfer-syntax={EXPLICIT_LITTLE} (uncompressed): accept that, transfer-syntax=* or */*")
    row = _images(study, series, instance)[0]
    ds = _pixels(row)
    parts = [(f"application/octet-stream; transfer-syntax={EXPLICIT_LITTLE}", _frame_bytes(ds, n)) for n in numbers]
    return multipart(parts, "application/octet-stream")


def _frame_numbers(frames: str) -> list[int]:
    if not re.fullmatch(r"[0-9]{1,6}(,[0-9]{1,6}){0,999}", frames) or "0" in frames.split(","):
        fail(400, "frames: a comma-separated list of frame numbers counted from 1, such as 1 or 1,2")
    return [int(n) for n in frames.split(",")]


def _pixels(row: Study) -> Dataset:
    try:
        ds = read_dataset(current_services().storage.get(row.storage_key))
    except (OSError, ImageDecodeError) as exc:
        logger.warning("stored original of study row %s unreadable: %s", row.id, exc)
        fail(500, "the stored original cannot be read; it has been logged")
    if "PixelData" not in ds or "Rows" not in ds:
        fail(404, "this instance has no pixel data")
    return ds


def _frame_bytes(ds: Dataset, number: int) -> bytes:
    import numpy as np

    if number > _frame_count(ds):
        fail(404, f"this instance has {_frame_count(ds)} frame(s)")
    try:
        ds.pixel_array_options(index=number - 1)
        pixels = ds.pixel_array
    except Exception as exc:  # a missing codec, a truncated frame: the reason, not a 500 page
        fail(500, f"cannot decode frame {number} ({ds.file_meta.TransferSyntaxUID.name}): {exc}")
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    size = max(1, (int(ds.get("BitsAllocated", 16)) + 7) // 8)
    return pixels.astype(np.dtype(f"<{'i' if signed else 'u'}{size}")).tobytes()


@bp.get("/studies/<study>/series/<series>/instances/<instance>/rendered")
@bp.get("/studies/<study>/series/<series>/instances/<instance>/frames/<frames>/rendered")
def retrieve_rendered(study: str, series: str, instance: str, frames: str = "1"):
    """The film as a picture (JPEG by default, or PNG), windowed as the screening pipeline sees it."""
    if _frame_numbers(frames) != [1]:
        fail(400, "only frame 1 is rendered")
    media = choose(accepted(), ["image/jpeg", "image/png"])
    if media is None:
        fail(406, "rendered pictures are image/jpeg or image/png: accept one of them")
    quality = request.args.get("quality", "90")
    if not quality.isdigit() or not 1 <= int(quality) <= 100:
        fail(400, "quality must be a whole number from 1 to 100")
    row = _images(study, series, instance)[0]
    try:
        pixels = decode_dicom(current_services().storage.get(row.storage_key))
    except ImageDecodeError as exc:
        fail(404, f"this instance cannot be rendered: {exc}")
    if media == "image/png":
        return Response(to_png(pixels), mimetype=media)
    buffer = io.BytesIO()
    Image.fromarray((pixels * 255.0 + 0.5).clip(0, 255).astype("uint8")).save(buffer, "JPEG", quality=int(quality))
    return Response(buffer.getvalue(), mimetype=media)
