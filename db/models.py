"""ORM classes: users and tokens, batches of images, predictions, review flags, radiology studies and their
results, outbound messages, workers, audit log.

Naming: a `Study` row is one image handed over (the historical name); a `StudyResult` is the radiology study
(images sharing a StudyInstanceUID within one department) and the one result reported for it.
"""
from datetime import datetime, timedelta, timezone
from enum import StrEnum

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

ROLES = ("uploader", "reviewer", "admin")


class StudyStatus(StrEnum):
    """Where a study stands; every study ends `done` or `error`."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    ERROR = "error"


UNFINISHED = (StudyStatus.QUEUED, StudyStatus.RUNNING)
FINISHED = (StudyStatus.DONE, StudyStatus.ERROR)


class FlagStatus(StrEnum):
    """A review flag waits for a reviewer (`open`) until a decision closes it."""

    OPEN = "open"
    CLOSED = "closed"


class Decision(StrEnum):
    """What a reviewer may record on a flagged study."""

    PNEUMONIA = "pneumonia"
    NORMAL = "normal"
    UNREADABLE = "unreadable"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(moment: datetime) -> datetime:
    """A time with its zone: SQLite hands back naive UTC times, PostgreSQL aware ones."""
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })


class Department(Base):
    """A radiology department: uploaders see their own department's batches only."""

    __tablename__ = "departments"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    # Share of unflagged NORMAL calls drawn for quality-check review; None: the service default.
    qa_share: Mapped[float | None] = mapped_column(Float)
    # Where results go back to (studies/outbound.py): {"dicom": {...}, "hl7": {...}, "fhir": {...}}; None: nowhere.
    outbound: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# "Radiology North" and "radiology north" are one department (db.accounts.ensure_department).
Index("uq_departments_name_lower", func.lower(Department.name), unique=True)


class User(Base):
    """A person who uploads, reviews or administers."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), index=True)
    active: Mapped[bool] = mapped_column(default=True)
    # Raised on logout and on disable/enable: every session cookie issued before stops working.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    tokens: Mapped[list["ApiToken"]] = relationship(back_populates="user")


class ApiToken(Base):
    """A bearer token; only its SHA-256 is stored."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(80))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # None: never expires
    user: Mapped[User] = relationship(back_populates="tokens")


class Batch(Base):
    """One upload: a set of studies handed over together."""

    __tablename__ = "batches"
    id: Mapped[int] = mapped_column(primary_key=True)
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), index=True)
    source: Mapped[str] = mapped_column(String(16), default="api")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # When the last file handed over was stored (studies/intake.py); until then the batch is `receiving`,
    # its first studies already being screened.
    received_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    studies: Mapped[list["Study"]] = relationship(back_populates="batch", order_by="Study.id")


class BatchRejection(Base):
    """A file handed over with a batch and refused at the door, with why (studies/rejections.py)."""

    __tablename__ = "batch_rejections"
    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    reason: Mapped[str] = mapped_column(String(500))


class Study(Base):
    """One uploaded image and where it stands; the database is the source of truth for its state."""

    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(primary_key=True)
    batch_id: Mapped[int] = mapped_column(ForeignKey("batches.id"), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    content_sha256: Mapped[str] = mapped_column(String(64), index=True)
    storage_key: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default=StudyStatus.QUEUED, index=True)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Same content uploaded before: the result is copied from that study, not inferred again.
    duplicate_of_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"))
    # The worker process (workers.id) that last claimed it; no foreign key: old worker rows are pruned.
    claimed_by: Mapped[int | None] = mapped_column(Integer)
    # DICOM attributes (none for PNG/JPEG uploads); never patient name or id.
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    view_position: Mapped[str | None] = mapped_column(String(16))
    patient_age: Mapped[str | None] = mapped_column(String(8))
    body_part: Mapped[str | None] = mapped_column(String(32))
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8), index=True)  # DICOM DA, YYYYMMDD
    acquired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    patient_sex: Mapped[str | None] = mapped_column(String(1))
    sop_class_uid: Mapped[str | None] = mapped_column(String(64))
    # Accepted but not screened (studies/applicability.py): status done, no prediction, never in the review queue.
    not_applicable: Mapped[str | None] = mapped_column(Text)
    # When its stored original was deleted by a purge (studies/retention.py); results and pictures stay.
    original_purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The radiology study this image belongs to (one result is reported per study).
    study_result_id: Mapped[int | None] = mapped_column(ForeignKey("study_results.id"), index=True)
    batch: Mapped[Batch] = relationship(back_populates="studies")
    prediction: Mapped["Prediction | None"] = relationship(back_populates="study", uselist=False)
    flag: Mapped["ReviewFlag | None"] = relationship(back_populates="study", uselist=False)
    study_result: Mapped["StudyResult | None"] = relationship(back_populates="images", foreign_keys=[study_result_id])


class ReportStatus(StrEnum):
    """A study result's report status, as FHIR DiagnosticReport.status names it."""

    REGISTERED = "registered"  # images arrived, nothing read yet
    PRELIMINARY = "preliminary"  # a model result, a flag waiting for a reviewer
    FINAL = "final"  # nothing to review, or reviewed
    AMENDED = "amended"  # changed after final by new images
    CORRECTED = "corrected"  # changed after final by a reviewer's decision
    CANCELLED = "cancelled"  # no image could be read


class StudyResult(Base):
    """A radiology study (images with one StudyInstanceUID in one department, or a PNG/JPEG image alone) and the
    one result reported for it; recomputed by studies.results.refresh whenever an image or a decision changes."""

    __tablename__ = "study_results"
    __table_args__ = (UniqueConstraint("group_key"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    # "d<department id>:<uid>" or "u<uploader id>:<uid>" for DICOM studies; None for an image alone.
    group_key: Mapped[str | None] = mapped_column(String(100))
    department_id: Mapped[int | None] = mapped_column(ForeignKey("departments.id"), index=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), index=True)
    accession_number: Mapped[str | None] = mapped_column(String(16), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8), index=True)
    acquired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # in_scope, out_of_scope, not_applicable, pending, error
    scope: Mapped[str] = mapped_column(String(24), default="pending")
    call: Mapped[str | None] = mapped_column(String(16))  # PNEUMONIA / NORMAL from the model, or None
    probability: Mapped[float | None] = mapped_column(Float)
    threshold: Mapped[float | None] = mapped_column(Float)
    decided_by_image_id: Mapped[int | None] = mapped_column(Integer)  # the studies.id whose result stands
    model_version: Mapped[str | None] = mapped_column(String(80))
    review_decision: Mapped[str | None] = mapped_column(String(16))  # the latest reviewer decision, if any
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    open_flags: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), default=ReportStatus.REGISTERED, index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)  # FHIR meta.versionId: rises on every change
    finalised_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # first time it was final
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    images: Mapped[list["Study"]] = relationship(back_populates="study_result", order_by="Study.id",
                                                 foreign_keys="Study.study_result_id")


class OutboundState(StrEnum):
    PENDING = "pending"  # waiting for its next attempt
    SENDING = "sending"  # a deliverer holds it until next_attempt_at (its lease), then another may
    SENT = "sent"
    SUPERSEDED = "superseded"  # a newer version of the result replaced it before it went out
    FAILED = "failed"  # gave up after the last attempt; an admin can send it again


class OutboundMessage(Base):
    """A result on its way to a PACS, RIS or FHIR server; one per study result version, kind and destination."""

    __tablename__ = "outbound_messages"
    __table_args__ = (UniqueConstraint("study_result_id", "kind", "result_version",
                                       name="uq_outbound_messages_result_kind_version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    study_result_id: Mapped[int] = mapped_column(ForeignKey("study_results.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # sr, sc, hl7, fhir
    result_version: Mapped[int] = mapped_column(Integer)
    destination: Mapped[str] = mapped_column(String(200))  # for people: "PACS@10.0.0.5:104"
    state: Mapped[str] = mapped_column(String(12), default=OutboundState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    study_result: Mapped[StudyResult] = relationship()


class MetricCounter(Base):
    """A counter any process can raise (listener, worker, web) and /metrics reads: values only rise."""

    __tablename__ = "metric_counters"
    name: Mapped[str] = mapped_column(String(80), primary_key=True)
    labels: Mapped[str] = mapped_column(String(200), primary_key=True, default="")  # 'a="x",b="y"'
    value: Mapped[float] = mapped_column(Float, default=0.0)


class SiteCalibration(Base):
    """A department's operating point, chosen on its own labelled films; the active one is in use."""

    __tablename__ = "site_calibrations"
    id: Mapped[int] = mapped_column(primary_key=True)
    department_id: Mapped[int] = mapped_column(ForeignKey("departments.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)  # 1, 2, ... within the department
    active: Mapped[bool] = mapped_column(default=False)
    threshold: Mapped[float] = mapped_column(Float)
    band_low: Mapped[float] = mapped_column(Float)
    miss_rate_target: Mapped[float] = mapped_column(Float)
    # What the labelled sample said about this point (models.operating_point.Choice).
    n_normal: Mapped[int] = mapped_column(Integer)
    n_pneumonia: Mapped[int] = mapped_column(Integer)
    sensitivity: Mapped[float] = mapped_column(Float)
    specificity: Mapped[float] = mapped_column(Float)
    miss_rate: Mapped[float] = mapped_column(Float)
    miss_rate_upper: Mapped[float] = mapped_column(Float)
    review_load: Mapped[float] = mapped_column(Float)
    model_version: Mapped[str] = mapped_column(String(80))
    data_sha256: Mapped[str] = mapped_column(String(64))
    roc_png: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # None: a proposal from the portal that no admin has accepted yet (never used for calls).
    accepted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    department: Mapped[Department] = relationship()


class Prediction(Base):
    """The model's result for a study, with the model version that produced it."""

    __tablename__ = "predictions"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    model_name: Mapped[str] = mapped_column(String(80))
    model_version: Mapped[str] = mapped_column(String(80))
    probability: Mapped[float] = mapped_column(Float)
    prediction: Mapped[str] = mapped_column(String(16))
    threshold: Mapped[float] = mapped_column(Float)
    # The department's operating point the call and flags used; None: the shipped one.
    site_calibration_id: Mapped[int | None] = mapped_column(ForeignKey("site_calibrations.id"))
    crop_box: Mapped[list[float]] = mapped_column(JSON)
    # Model extras: out-of-scope score, test-time-augmentation spread, and the like.
    details: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    study: Mapped[Study] = relationship(back_populates="prediction")


class ReviewFlag(Base):
    """A study a reviewer should look at, with why; closed once a decision is recorded."""

    __tablename__ = "review_flags"
    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), unique=True)
    # The flag reasons (models.flags.FlagReason values), in the order the model gives them.
    reasons: Mapped[list[str]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=FlagStatus.OPEN, index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # A soft lock (studies.reviews.claim): the reader who opened it, until when; others are warned and skip it.
    claimed_by: Mapped[int | None] = mapped_column(Integer)  # users.id; no foreign key: a hint, not a record
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    study: Mapped[Study] = relationship(back_populates="flag")
    reviews: Mapped[list["Review"]] = relationship(back_populates="flag", order_by="Review.id")

    @property
    def latest(self) -> "Review | None":
        return self.reviews[-1] if self.reviews else None


class Review(Base):
    """A reviewer's decision on a flag; never overwritten, a later one supersedes it."""

    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(primary_key=True)
    flag_id: Mapped[int] = mapped_column(ForeignKey("review_flags.id"), index=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    decision: Mapped[str] = mapped_column(String(16))
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    flag: Mapped[ReviewFlag] = relationship(back_populates="reviews")
    reviewer: Mapped[User] = relationship()


class DicomPending(Base):
    """An instance the DICOM listener has stored and acknowledged, waiting for its study to go quiet."""

    __tablename__ = "dicom_pending"
    id: Mapped[int] = mapped_column(primary_key=True)
    calling_ae: Mapped[str] = mapped_column(String(16), index=True)
    address: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    filename: Mapped[str] = mapped_column(String(512))
    storage_key: Mapped[str] = mapped_column(String(128))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


# A worker that missed this many heartbeats is dead: the sweeper sends its running studies again.
MISSED_BEATS = 3


def heartbeat_cutoff(heartbeat_s: int, now: datetime | None = None) -> datetime:
    """Workers whose last heartbeat is older than this are dead (worker/heartbeat.py, /healthz)."""
    return (now or utcnow()) - timedelta(seconds=MISSED_BEATS * heartbeat_s)


class Worker(Base):
    """A process that claims studies (a prefork pool child, or a solo worker), alive while it heartbeats."""

    __tablename__ = "workers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))  # hostname:pid, for people; pids are reused, ids are not
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class AuditEvent(Base):
    """Who did what to which object, and when."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    action: Mapped[str] = mapped_column(String(40))
    object_type: Mapped[str] = mapped_column(String(40))
    object_id: Mapped[int | None] = mapped_column(Integer)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
