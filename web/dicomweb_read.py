"""DICOMweb search (QIDO-RS, PS3.18 10.6) and retrieve (WADO-RS, 10.4) of the DICOM originals a caller may see.

One `studies` row is one stored image; a SOP instance sent twice is answered once (its newest visible copy).
PNG/JPEG uploads have no DICOM original and are never listed. Nothing is transcoded: instances go out as stored,
frames as uncompressed pixel data.
"""
import datetime
import io
import json
import logging
import re
from dataclasses import dataclass, field

from flask import Blueprint, Response, abort, jsonify, request, url_for
from flask_login import current_user
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from sqlalchemy import and_, distinct, func, select, true

from core.services import current_services
from db.models import Batch, Study, as_utc
from models.dicom import decode_dicom, read_dataset
from models.imaging import to_png
from models.limits import ImageDecodeError
from web.context import db_session
from web.dicomweb import DICOM_JSON, UID, choose, multipart, multipart_syntaxes, parse_accept
from web.queries import visible_batches

logger = logging.getLogger(__name__)
bp = Blueprint("dicomweb_read", __name__, url_prefix="/dicomweb")

EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
JSON_TYPES = [DICOM_JSON, "application/json"]
MAX_RESULTS = 1000  # one search answer; more with offset (a Warning header says so)
BULK_VRS = ("OB", "OD", "OF", "OL", "OV", "OW", "UN")
# Search keys matched per level, and the row column each reads.
COLUMNS = {"StudyInstanceUID": Study.study_instance_uid, "AccessionNumber": Study.accession_number,
           "StudyDate": Study.study_date, "ModalitiesInStudy": Study.modality, "Modality": Study.modality,
           "SeriesInstanceUID": Study.series_instance_uid, "SOPInstanceUID": Study.sop_instance_uid,
           "SOPClassUID": Study.sop_class_uid}
MATCHED = {"study": {"StudyInstanceUID", "AccessionNumber", "StudyDate", "ModalitiesInStudy"},
           "series": {"SeriesInstanceUID", "Modality"},
           "instance": {"SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality"}}
# Answered empty: the service keeps no patient identity in its index. A key with a value (not *) matches nothing.
EMPTY = {"PatientName", "PatientID", "PatientBirthDate", "ReferringPhysicianName", "StudyID", "StudyTime",
         "StudyDescription", "SeriesDescription", "SeriesNumber"}


@bp.before_request
def _signed_in():
    """A bearer token or a portal session (a browser viewer); every UID in the path checked before any query."""
    if not current_user.is_authenticated:
        return jsonify(error="authentication required: send 'Authorization: Bearer <token>' or sign in"), 401, {
            "WWW-Authenticate": "Bearer"}
    if current_user.role not in ("uploader", "reviewer", "admin"):
        return jsonify(error="this needs the role uploader, reviewer or admin"), 403
    for name, value in (request.view_args or {}).items():
        if name != "frames" and not UID.fullmatch(value):
            return jsonify(error=f"the {name} UID must be digits and dots, at most 64 characters"), 400
    return None


def _fail(status: int, message: str):
    abort(Response(jsonify(error=message).get_data(), status=status, mimetype="application/json"))


def _accept() -> list:
    try:
        return parse_accept(request.headers.get("Accept"))
    except ValueError as exc:
        _fail(400, str(exc))


def _json_type() -> str:
    media = choose(_accept(), JSON_TYPES)
    if media is None:
        _fail(406, "this resource is application/dicom+json (or application/json): accept one of them")
    return media


# ---- the visible DICOM images ----

def _visible(statement):
    """Only images the caller may see (web.queries' department rule) that carry their three UIDs."""
    return statement.select_from(Study).join(Batch, Study.batch_id == Batch.id).where(
        visible_batches(), Study.study_instance_uid.is_not(None), Study.series_instance_uid.is_not(None),
        Study.sop_instance_uid.is_not(None))


def _newest_copies(*conditions):
    """Rows of the matching instances, one per SOP instance UID (the newest visible copy)."""
    newest = _visible(select(func.max(Study.id))).where(*conditions).group_by(Study.sop_instance_uid)
    return select(Study).where(Study.id.in_(newest))


def _images(study: str, series: str | None = None, instance: str | None = None) -> list[Study]:
    conditions = [Study.study_instance_uid == study]
    if series is not None:
        conditions.append(Study.series_instance_uid == series)
    if instance is not None:
        conditions.append(Study.sop_instance_uid == instance)
    rows = db_session().scalars(_newest_copies(*conditions).order_by(Study.series_instance_uid, Study.id)).all()
    if not rows:
        _fail(404, "no such " + ("instance" if instance else "series" if series else "study"))
    purged = [row for row in rows if row.original_purged_at is not None]
    if purged:  # retention (`pneumoscreen purge`): the results stay, the files are gone
        _fail(410, f"{len(purged)} of {len(rows)} stored originals were purged by the retention policy (first on "
                   f"{as_utc(purged[0].original_purged_at):%Y-%m-%d}); their results remain in the API and FHIR")
    return rows


# ---- QIDO-RS ----

@dataclass
class Query:
    """A search's parsed query parameters."""

    matches: dict[str, list[str]] = field(default_factory=dict)
    limit: int | None = None
    offset: int = 0
    include: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    nothing: bool = False  # a key on an attribute answered empty: no image can match it


def parse_query(level: str, args) -> Query:
    """Search parameters (PS3.18 8.3.4) for `level`; ValueError with the reason for a bad one."""
    query, ignored = Query(), []
    for name in args:
        values = args.getlist(name)
        if name in ("limit", "offset"):
            if not re.fullmatch(r"[0-9]{1,9}", values[-1]) or (name == "limit" and int(values[-1]) == 0):
                raise ValueError(f"{name} must be a whole number{' above 0' if name == 'limit' else ''}")
            setattr(query, name, int(values[-1]))
        elif name == "includefield":
            query.include |= {part if part == "all" else _keyword(part)
                              for value in values for part in value.split(",") if part}
        elif name == "fuzzymatching":
            if values[-1].lower() == "true":
                query.warnings.append("fuzzy matching is not supported: literal matching was performed")
        elif name in ("accept", "charset"):
            ignored.append(name)
        else:
            key = _keyword(name)
            if not any(value.strip("*") for value in values):
                continue  # universal matching: * or empty matches everything
            if key in MATCHED[level]:
                query.matches[key] = _values(key, values)
            elif key in EMPTY:
                query.nothing = True
            else:
                ignored.append(name)
    if ignored:
        query.warnings.append(f"these query keys are not supported and were ignored: {', '.join(ignored)}")
    return query


def _keyword(name: str) -> str:
    from pydicom.datadict import keyword_for_tag, tag_for_keyword

    keyword = keyword_for_tag(int(name, 16)) if re.fullmatch(r"[0-9A-Fa-f]{8}", name) else \
        name if tag_for_keyword(name) is not None else None
    if not keyword:
        raise ValueError(f"{name[:80]!r} is not a DICOM attribute keyword or tag (ggggeeee)")
    return keyword


def _values(key: str, values: list[str]) -> list[str]:
    """Check a key's values: UID lists, a date or date range, modality codes, one accession number."""
    parts = [part.strip() for value in values for part in re.split(r"[,\\]", value) if part.strip()]
    if not parts:
        raise ValueError(f"{key} needs a value")
    if key.endswith("UID"):
        bad = [part for part in parts if not UID.fullmatch(part)]
        if bad:
            raise ValueError(f"{key}: {bad[0][:80]!r} is not a UID (digits and dots, at most 64 characters)")
    elif key == "StudyDate":
        if len(parts) > 1:
            raise ValueError("StudyDate takes one date (YYYYMMDD) or one range (YYYYMMDD-YYYYMMDD, open at either end)")
        _date_range(parts[0])
    elif key in ("Modality", "ModalitiesInStudy"):
        parts = [part.upper() for part in parts]
        if not all(re.fullmatch(r"[A-Z0-9_ ]{1,16}", part) for part in parts):
            raise ValueError(f"{key} takes modality codes such as CR, DX")
    elif len(parts) > 1 or len(parts[0]) > 16:
        raise ValueError(f"{key} takes one value of at most 16 characters (* and ? as wildcards)")
    return parts


def _date_range(text: str) -> tuple[str | None, str | None]:
    """(low, high) of a DA match: a date, or a range open at either end."""
    low, dash, high = text.partition("-")
    if not dash:
        high = low
    if not low and not high or not all(_is_date(value) for value in (low, high) if value):
        raise ValueError(f"StudyDate {text[:40]!r}: use YYYYMMDD or YYYYMMDD-YYYYMMDD (open at either end)")
    return low or None, high or None


def _is_date(value: str) -> bool:
    try:
        return len(value) == 8 and bool(datetime.datetime.strptime(value, "%Y%m%d"))
    except ValueError:
        return False


def _condition(key: str, values: list[str]):
    column = COLUMNS[key]
    if key == "StudyDate":
        low, high = _date_range(values[0])
        return and_(column >= low if low else true(), column <= high if high else true())
    if key == "AccessionNumber" and re.search(r"[*?]", values[0]):
        if not values[0].strip("*"):
            return true()  # universal match
        pattern = re.sub(r"([%_\\])", r"\\\1", values[0]).replace("*", "%").replace("?", "_")
        return column.like(pattern, escape="\\")
    return column.in_(values)


@bp.get("/studies")
def search_studies():
    return _search("study")


@bp.get("/studies/<study>/series")
def search_series(study: str):
    return _search("series", Study.study_instance_uid == study)


@bp.get("/studies/<study>/instances")
def search_study_instances(study: str):
    return _search("instance", Study.study_instance_uid == study)


@bp.get("/studies/<study>/series/<series>/instances")
def search_series_instances(study: str, series: str):
    return _search("instance", Study.study_instance_uid == study, Study.series_instance_uid == series)


def _search(level: str, *scope):
    media = _json_type()
    try:
        query = parse_query(level, request.args)
    except ValueError as exc:
        _fail(400, str(exc))
    limit = min(query.limit or MAX_RESULTS, MAX_RESULTS)
    found = []
    if not query.nothing:
        conditions = [*scope, *(_condition(key, values) for key, values in query.matches.items())]
        found = {"study": _studies, "series": _series, "instance": _instances}[level](
            conditions, query, query.offset, limit + 1)
    warnings = list(query.warnings)
    if len(found) > limit:
        found = found[:limit]
        if query.limit is None or query.limit > MAX_RESULTS:
            warnings.append("the number of results exceeded the maximum supported by the server: "
                            "additional results can be requested with offset")
    response = Response(json.dumps([ds.to_json_dict(suppress_invalid_tags=True) for ds in found]), mimetype=media)
    for warning in warnings:
        response.headers.add("Warning", f'299 {request.host} "{warning}"')
    return response


def _studies(conditions: list, query: Query, offset: int, limit: int) -> list[Dataset]:
    matching = _visible(select(Study.study_instance_uid)).where(*conditions)
    rows = db_session().execute(
        _visible(select(Study.study_instance_uid, func.min(Study.study_date), func.min(Study.accession_number),
                        func.min(Study.patient_sex), func.min(Study.patient_age),
                        func.count(distinct(Study.series_instance_uid)), func.count(distinct(Study.sop_instance_uid))))
        .where(Study.study_instance_uid.in_(matching)).group_by(Study.study_instance_uid)
        .order_by(func.max(Study.id).desc(), Study.study_instance_uid).offset(offset).limit(limit)).all()
    modalities: dict[str, set] = {}
    for uid, modality in db_session().execute(_visible(select(Study.study_instance_uid, Study.modality)).where(
            Study.study_instance_uid.in_([row[0] for row in rows])).distinct()):
        modalities.setdefault(uid, set()).add(modality or "OT")
    found = []
    for uid, date, accession, sex, age, series, instances in rows:
        ds = _empty(Dataset(), "StudyTime", "ReferringPhysicianName", "PatientName", "PatientID",
                    "PatientBirthDate", "StudyID")
        ds.StudyInstanceUID, ds.StudyDate, ds.AccessionNumber = uid, date or "", accession or ""
        ds.InstanceAvailability, ds.ModalitiesInStudy = "ONLINE", sorted(modalities.get(uid, ()))
        ds.PatientSex, ds.NumberOfStudyRelatedSeries, ds.NumberOfStudyRelatedInstances = sex or "", series, instances
        if _wants(query, "PatientAge") and age:
            ds.PatientAge = age
        ds.RetrieveURL = url_for("dicomweb_read.retrieve", study=uid, _external=True)
        found.append(ds)
    return found


def _series(conditions: list, query: Query, offset: int, limit: int) -> list[Dataset]:
    rows = db_session().execute(
        _visible(select(Study.study_instance_uid, Study.series_instance_uid, func.min(Study.modality),
                        func.min(Study.body_part), func.count(distinct(Study.sop_instance_uid))))
        .where(*conditions).group_by(Study.study_instance_uid, Study.series_instance_uid)
        .order_by(func.min(Study.id), Study.series_instance_uid).offset(offset).limit(limit)).all()
    found = []
    for study, series, modality, body_part, instances in rows:
        ds = _empty(Dataset(), "SeriesNumber", "SeriesDescription")
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, modality or "OT"
        ds.NumberOfSeriesRelatedInstances = instances
        if _wants(query, "BodyPartExamined") and body_part:
            ds.BodyPartExamined = body_part
        ds.RetrieveURL = url_for("dicomweb_read.retrieve", study=study, series=series, _external=True)
        found.append(ds)
    return found


INSTANCE_HEADER = ("InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames")


def _instances(conditions: list, query: Query, offset: int, limit: int) -> list[Dataset]:
    rows = db_session().scalars(_newest_copies(*conditions).order_by(Study.series_instance_uid, Study.id)
                                .offset(offset).limit(limit)).all()
    storage, found = current_services().storage, []
    for row in rows:
        ds = Dataset()
        header = _header(storage, row)
        for keyword in header.dir() if "all" in query.include else (*INSTANCE_HEADER, *sorted(query.include)):
            if keyword in header and header[keyword].VR not in (*BULK_VRS, "SQ") and keyword != "PixelData":
                ds[keyword] = header[keyword]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = row.study_instance_uid, row.series_instance_uid
        ds.SOPInstanceUID, ds.SOPClassUID = row.sop_instance_uid, row.sop_class_uid or ""
        ds.Modality, ds.InstanceAvailability = row.modality or "OT", "ONLINE"
        ds.RetrieveURL = _instance_url(row)
        found.append(ds)
    return found


def _wants(query: Query, keyword: str) -> bool:
    return keyword in query.include or "all" in query.include


def _empty(ds: Dataset, *keywords: str) -> Dataset:
    for keyword in keywords:
        setattr(ds, keyword, "")
    return ds


def _header(storage, row: Study) -> Dataset:
    """The stored original's header (no pixels); empty when it cannot be read (logged)."""
    try:
        return read_dataset(storage.get(row.storage_key), pixels=False)
    except (OSError, ImageDecodeError) as exc:
        logger.warning("stored original of study row %s unreadable: %s", row.id, exc)
        return Dataset()


def _instance_url(row: Study, suffix: str = "") -> str:
    return url_for("dicomweb_read.retrieve", study=row.study_instance_uid, series=row.series_instance_uid,
                   instance=row.sop_instance_uid, _external=True) + suffix


# ---- WADO-RS ----

@bp.get("/studies/<study>")
@bp.get("/studies/<study>/series/<series>")
@bp.get("/studies/<study>/series/<series>/instances/<instance>")
def retrieve(study: str, series: str | None = None, instance: str | None = None) -> Response:
    """The stored originals of a study, series or instance as multipart/related; type="application/dicom", in
    their stored transfer syntax (url_for picks the rule that takes the ids given)."""
    rows = _images(study, series, instance)
    syntaxes = multipart_syntaxes(_accept(), "application/dicom")
    if syntaxes is None:
        _fail(406, 'instances are sent as multipart/related; type="application/dicom": accept that (or */*)')
    storage = current_services().storage
    if "*" not in syntaxes:  # a first look at the headers: refuse before any part is sent
        refused = sorted({syntax for row in rows
                          if (syntax := str(getattr(_header(storage, row), "file_meta", {}).get("TransferSyntaxUID")))
                          not in syntaxes})
        if refused:
            _fail(406, f"stored as transfer syntax {', '.join(refused)} and not transcoded here: ask for "
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


@bp.get("/studies/<study>/metadata")
@bp.get("/studies/<study>/series/<series>/metadata")
@bp.get("/studies/<study>/series/<series>/instances/<instance>/metadata")
def metadata(study: str, series: str | None = None, instance: str | None = None) -> Response:
    """Each instance's header as DICOM JSON: bulk data left out, PixelData as a BulkDataURI to its frames."""
    rows = _images(study, series, instance)
    media, storage, found = _json_type(), current_services().storage, []
    for row in rows:
        header = _header(storage, row)
        _drop_bulk(header)
        attributes = header.to_json_dict(suppress_invalid_tags=True)
        if "Rows" in header:
            frames = ",".join(str(n) for n in range(1, _frame_count(header) + 1))
            attributes["7FE00010"] = {"vr": "OW" if int(header.get("BitsAllocated", 16)) > 8 else "OB",
                                      "BulkDataURI": _instance_url(row, f"/frames/{frames}")}
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


@bp.get("/studies/<study>/series/<series>/instances/<instance>/frames/<frames>")
def retrieve_frames(study: str, series: str, instance: str, frames: str):
    """Frames as uncompressed pixel data (explicit VR little endian), one part each, as PS3.18 8.7.3.3.2 has."""
    numbers = _frame_numbers(frames)
    syntaxes = multipart_syntaxes(_accept(), "application/octet-stream")
    if syntaxes is None or not syntaxes & {"*", EXPLICIT_LITTLE}:
        _fail(406, f'frames are sent as multipart/related; type="application/octet-stream"; '
                   f"transfer-syntax={EXPLICIT_LITTLE} (uncompressed): accept that, transfer-syntax=* or */*")
    row = _images(study, series, instance)[0]
    ds = _pixels(row)
    parts = [(f"application/octet-stream; transfer-syntax={EXPLICIT_LITTLE}", _frame_bytes(ds, n)) for n in numbers]
    return multipart(parts, "application/octet-stream")


def _frame_numbers(frames: str) -> list[int]:
    if not re.fullmatch(r"[0-9]{1,6}(,[0-9]{1,6}){0,999}", frames) or "0" in frames.split(","):
        _fail(400, "frames: a comma-separated list of frame numbers counted from 1, such as 1 or 1,2")
    return [int(n) for n in frames.split(",")]


def _pixels(row: Study) -> Dataset:
    try:
        ds = read_dataset(current_services().storage.get(row.storage_key))
    except (OSError, ImageDecodeError) as exc:
        logger.warning("stored original of study row %s unreadable: %s", row.id, exc)
        _fail(500, "the stored original cannot be read; it has been logged")
    if "PixelData" not in ds or "Rows" not in ds:
        _fail(404, "this instance has no pixel data")
    return ds


def _frame_bytes(ds: Dataset, number: int) -> bytes:
    import numpy as np

    if number > _frame_count(ds):
        _fail(404, f"this instance has {_frame_count(ds)} frame(s)")
    try:
        ds.pixel_array_options(index=number - 1)
        pixels = ds.pixel_array
    except Exception as exc:  # a missing codec, a truncated frame: the reason, not a 500 page
        _fail(500, f"cannot decode frame {number} ({ds.file_meta.TransferSyntaxUID.name}): {exc}")
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    size = max(1, (int(ds.get("BitsAllocated", 16)) + 7) // 8)
    return pixels.astype(np.dtype(f"<{'i' if signed else 'u'}{size}")).tobytes()


@bp.get("/studies/<study>/series/<series>/instances/<instance>/rendered")
@bp.get("/studies/<study>/series/<series>/instances/<instance>/frames/<frames>/rendered")
def retrieve_rendered(study: str, series: str, instance: str, frames: str = "1"):
    """The film as a picture (JPEG by default, or PNG), windowed as the screening pipeline sees it."""
    if _frame_numbers(frames) != [1]:
        _fail(400, "only frame 1 is rendered")
    media = choose(_accept(), ["image/jpeg", "image/png"])
    if media is None:
        _fail(406, "rendered pictures are image/jpeg or image/png: accept one of them")
    quality = request.args.get("quality", "90")
    if not quality.isdigit() or not 1 <= int(quality) <= 100:
        _fail(400, "quality must be a whole number from 1 to 100")
    row = _images(study, series, instance)[0]
    try:
        pixels = decode_dicom(current_services().storage.get(row.storage_key))
    except ImageDecodeError as exc:
        _fail(404, f"this instance cannot be rendered: {exc}")
    if media == "image/png":
        return Response(to_png(pixels), mimetype=media)
    buffer = io.BytesIO()
    Image.fromarray((pixels * 255.0 + 0.5).clip(0, 255).astype("uint8")).save(buffer, "JPEG", quality=int(quality))
    return Response(buffer.getvalue(), mimetype=media)
