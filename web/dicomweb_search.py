"""DICOMweb search (QIDO-RS, PS3.18 10.6) of the DICOM originals a caller may see: the query parser (Query,
parse_query), the /studies, /series and /instances search routes, and the rows they answer as DICOM JSON.

Routes are on web.dicomweb_read's blueprint. Patient identity is not indexed: keys on it are answered empty.
"""
import datetime
import json
import logging
import re
from dataclasses import dataclass, field

from flask import Response, request, url_for
from pydicom.dataset import Dataset
from sqlalchemy import and_, distinct, func, select, true

from core.services import current_services
from db.models import Study
from web.context import db_session
from web.dicomweb import UID
from web.dicomweb_read import BULK_VRS, bp, fail, instance_url, json_type, newest_copies, stored_header, visible

logger = logging.getLogger(__name__)

MAX_RESULTS = 1000  # one search answer; more with offset (a Warning header says so)
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
INSTANCE_HEADER = ("InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames")


# ---- the query ----

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


# ---- the routes ----

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
    media = json_type()
    try:
        query = parse_query(level, request.args)
    except ValueError as exc:
        fail(400, str(exc))
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


# ---- rows as DICOM JSON ----

def _studies(conditions: list, query: Query, offset: int, limit: int) -> list[Dataset]:
    matching = visible(select(Study.study_instance_uid)).where(*conditions)
    rows = db_session().execute(
        visible(select(Study.study_instance_uid, func.min(Study.study_date), func.min(Study.accession_number),
                       func.min(Study.patient_sex), func.min(Study.patient_age),
                       func.count(distinct(Study.series_instance_uid)), func.count(distinct(Study.sop_instance_uid))))
        .where(Study.study_instance_uid.in_(matching)).group_by(Study.study_instance_uid)
        .order_by(func.max(Study.id).desc(), Study.study_instance_uid).offset(offset).limit(limit)).all()
    modalities: dict[str, set] = {}
    for uid, modality in db_session().execute(visible(select(Study.study_instance_uid, Study.modality)).where(
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
        visible(select(Study.study_instance_uid, Study.series_instance_uid, func.min(Study.modality),
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


def _instances(conditions: list, query: Query, offset: int, limit: int) -> list[Dataset]:
    rows = db_session().scalars(newest_copies(*conditions).order_by(Study.series_instance_uid, Study.id)
                                .offset(offset).limit(limit)).all()
    storage, found = current_services().storage, []
    for row in rows:
        ds = Dataset()
        header = stored_header(storage, row)
        for keyword in header.dir() if "all" in query.include else (*INSTANCE_HEADER, *sorted(query.include)):
            if keyword in header and header[keyword].VR not in (*BULK_VRS, "SQ") and keyword != "PixelData":
                ds[keyword] = header[keyword]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = row.study_instance_uid, row.series_instance_uid
        ds.SOPInstanceUID, ds.SOPClassUID = row.sop_instance_uid, row.sop_class_uid or ""
        ds.Modality, ds.InstanceAvailability = row.modality or "OT", "ONLINE"
        ds.RetrieveURL = instance_url(row)
        found.append(ds)
    return found


def _wants(query: Query, keyword: str) -> bool:
    return keyword in query.include or "all" in query.include


def _empty(ds: Dataset, *keywords: str) -> Dataset:
    for keyword in keywords:
        setattr(ds, keyword, "")
    return ds
