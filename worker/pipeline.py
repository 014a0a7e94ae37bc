"""The screening pipeline: decode -> lung crop -> classifier -> flags, for the worker and the CLI alike."""
import functools
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings
from core.storage import ATTENTION, Storage
from db.models import (
    FINISHED,
    UNFINISHED,
    Batch,
    Prediction,
    ReviewFlag,
    Study,
    StudyStatus,
    Worker,
    as_utc,
    heartbeat_cutoff,
    utcnow,
)
from db.session import audit
from models.crop import FILM_SIZE
from models.imaging import ImageDecodeError
from models.operating_point import OperatingPoint
from models.precision import resolve
from models.reasons import FlagReason
from models.screener import Finding, Screener, decode_film
from studies.calibrations import active_by_department, point_of
from studies.duplicates import resolve_duplicates
from studies.pictures import attention_png
from studies.qa import draw, shares_by_department
from studies.results import refresh_many
from studies.scope import scope_reasons
from worker.heartbeat import current_worker_id

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


@dataclass
class Outcome:
    """What the pipeline made of one image: a finding, or the reason there is none."""

    finding: Finding | None = None
    image: np.ndarray | None = None
    error: str | None = None


# Held while the models load: a task arriving during preload() waits for it instead of loading them again.
_loading = threading.Lock()
_preloaded: dict[int, threading.Thread] = {}  # pid -> its preload (the solo pool signals twice)


def load_screener(settings: Settings) -> Screener:
    """Load TensorFlow and the settings' weights once per process, on first use (never before a fork), to compute
    in the settings' precision (models/precision.py)."""
    with _loading:
        return _loaded(settings.weights_dir, settings.model_precision)


@functools.cache
def _loaded(weights_dir: Path, precision: str) -> Screener:
    import tensorflow as tf

    # TensorFlow places the models on a GPU by itself when it sees one; say which it is.
    gpus = tf.config.list_physical_devices("GPU")
    precision = resolve(precision)
    logger.info("screening on %s in %s", ", ".join(gpu.name for gpu in gpus) if gpus else "CPU", precision)
    return Screener.load(weights_dir, precision=precision)


def preload(settings: Settings) -> threading.Thread:
    """Load the models and run them once at the batch size in a daemon thread, so that the first studies after a
    worker starts wait for neither (a few seconds on 2 cores). Called in the process that runs the tasks, after
    any fork, once per process. The threads per model process are set first: TensorFlow takes them only before its
    first operation."""
    if os.getpid() in _preloaded:
        return _preloaded[os.getpid()]
    _loading.acquire()  # taken by the caller: no task can load the models before the threads are set

    def run() -> None:
        try:
            try:
                threads = settings.threads_per_model_process()
                if threads:
                    import tensorflow as tf

                    tf.config.threading.set_intra_op_parallelism_threads(threads)
                    tf.config.threading.set_inter_op_parallelism_threads(threads)
                screener = _loaded(settings.weights_dir, settings.model_precision)
            finally:
                _loading.release()
            screener.run(np.zeros((settings.batch_size, FILM_SIZE, FILM_SIZE), np.float32))
            logger.info("models loaded and run once at batch size %d", settings.batch_size)
        except Exception:  # no weights yet, or a broken file: the first task says so to its batch
            logger.exception("preloading the models failed; the first task will try again")

    thread = _preloaded[os.getpid()] = threading.Thread(target=run, name="pneumoscreen-preload", daemon=True)
    thread.start()
    return thread


def screen_files(screener: Screener, blobs: list[bytes],
                 points: list[OperatingPoint | None] | None = None) -> list[Outcome]:
    """Decode every image, then run the models once over all that decoded (points: per file, None = shipped)."""
    # Pillow releases the GIL while decoding, so two threads keep both cores busy.
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(_decode, blobs))
    points = points or [None] * len(blobs)
    good = [i for i, outcome in enumerate(outcomes) if outcome.error is None]
    if good:
        findings = screener.screen([outcomes[i].image for i in good], [points[i] for i in good])
        for i, finding in zip(good, findings):
            outcomes[i].finding = finding
    return outcomes


def _decode(data: bytes) -> Outcome:
    """The decoded film, or why it cannot be screened: one bad film fails only itself, never its batch."""
    try:
        return Outcome(image=decode_film(data))
    except ImageDecodeError as exc:
        return Outcome(error=str(exc))
    except Exception as exc:  # decoding depends on these bytes alone: a retry cannot help, and the chunk goes on
        logger.exception("decoding a stored film failed unexpectedly")
        return Outcome(error=f"cannot decode the film ({type(exc).__name__}): {str(exc)[:200]}")


def run_batch(sessions: sessionmaker[Session], storage: Storage, screener: Screener, study_ids: list[int],
              qa_share: float = 0.0, fill_to: int = 0, heartbeat_s: int = 5) -> dict:
    """Screen the given studies and store the results; safe to run twice on the same ids.

    `qa_share` of the unflagged NORMAL calls become quality-check samples (a department's own share wins).
    `fill_to` > len(study_ids): other queued studies, oldest first, join the batch until it holds that many, so
    films from many small uploads and the DICOM listener go through the models together (dynamic batching);
    their own queue messages find them finished and skip them. `heartbeat_s`: the workers' heartbeat interval.
    """
    claimed = _claim(sessions, study_ids, qa_share, fill_to, heartbeat_s)
    if not claimed:  # all done already (another task took them into its batch): nothing to write either
        logger.info("batch of %d studies: nothing left to screen", len(study_ids))
        return {"done": 0, "error": 0, "skipped": 0}
    with ThreadPoolExecutor(max_workers=2) as pool:
        blobs = list(pool.map(functools.partial(_stored, storage), claimed))
        outcomes = screen_files(screener, [blob for blob, _ in blobs], [claim.point for claim in claimed])
        for (_, missing), outcome in zip(blobs, outcomes):
            if missing:
                outcome.error = missing
        list(pool.map(functools.partial(_attention, storage), (claim.study_id for claim in claimed), outcomes))
    return _record(sessions, screener, claimed, outcomes)


def _stored(storage: Storage, claim: "_Claim") -> tuple[bytes, str | None]:
    """The stored original, or why there is none."""
    try:
        return storage.get(claim.storage_key), None
    except FileNotFoundError:
        if claim.purged_at is not None:
            return b"", f"the original was purged by the retention policy on {as_utc(claim.purged_at):%Y-%m-%d}"
        return b"", "stored file is missing"


def _attention(storage: Storage, study_id: int, outcome: Outcome) -> None:
    """Keep the model's attention map; the pictures people look at are made when first asked for
    (studies/pictures.py)."""
    if outcome.finding is not None and outcome.finding.heatmap is not None:
        storage.put_derived(study_id, ATTENTION, attention_png(outcome.finding.heatmap))


@dataclass(frozen=True)
class _Claim:
    """A study this worker now runs, with its department's operating point (None: the shipped one)."""

    study_id: int
    storage_key: str
    qa_share: float
    calibration_id: int | None = None
    point: OperatingPoint | None = None
    purged_at: datetime | None = None  # the retention policy deleted its original


def _claim(sessions: sessionmaker[Session], study_ids: list[int], qa_share: float, fill_to: int,
           heartbeat_s: int) -> list[_Claim]:
    """Mark the studies running in one short transaction; studies tried too often end in error.

    A study is claimed when queued, or running for nobody alive: on no worker, on this one (a retried task), or
    on one whose heartbeat stopped. One running on a live worker (it took it into its batch) is left to it.
    """
    me = current_worker_id()  # whose heartbeat vouches for the claim (worker/heartbeat.py)
    with sessions.begin() as session:
        own = session.scalar(select(func.count()).select_from(Study)
                             .where(Study.id.in_(study_ids), Study.status.in_(UNFINISHED)))
        ids = list(study_ids)
        if fill_to > own:
            # The task's own studies that another batch has screened already leave their room to others.
            ids += session.scalars(
                select(Study.id).where(Study.status == StudyStatus.QUEUED, Study.duplicate_of_id.is_(None),
                                       Study.attempts < MAX_ATTEMPTS, Study.id.not_in(ids))
                .order_by(Study.id).limit(fill_to - own).with_for_update(skip_locked=True)).all()
        if not own and len(ids) == len(study_ids):
            # Dynamic batching took all its studies and nothing waits: most small uploads' messages end here,
            # so they end in two reads at most.
            return []
        if own:
            session.execute(
                update(Study)
                .where(Study.id.in_(study_ids), Study.status.in_(UNFINISHED),
                       Study.attempts >= MAX_ATTEMPTS)
                .values(status=StudyStatus.ERROR, finished_at=utcnow(),
                        error=f"gave up after {MAX_ATTEMPTS} attempts (worker crashed on this batch)"))
        alive = select(Worker.id).where(Worker.heartbeat_at >= heartbeat_cutoff(heartbeat_s), Worker.id != me)
        claimable = or_(Study.status == StudyStatus.QUEUED,
                        and_(Study.status == StudyStatus.RUNNING,
                             or_(Study.claimed_by.is_(None), Study.claimed_by.not_in(alive))))
        claimed_ids = session.scalars(
            update(Study).where(Study.id.in_(ids), claimable)
            .values(status=StudyStatus.RUNNING, started_at=utcnow(), attempts=Study.attempts + 1, claimed_by=me)
            .returning(Study.id)).all()
        rows = session.execute(
            select(Study.id, Study.storage_key, Study.original_purged_at, Batch.department_id)
            .join(Batch, Study.batch_id == Batch.id).where(Study.id.in_(claimed_ids)).order_by(Study.id)).all()
        departments = {row.department_id for row in rows}
        calibrations = active_by_department(session, departments)
        shares = shares_by_department(session, departments, qa_share)
    claims = []
    for row in rows:
        calibration, share = calibrations.get(row.department_id), shares[row.department_id]
        point = {} if calibration is None else {"calibration_id": calibration.id, "point": point_of(calibration)}
        claims.append(_Claim(row.id, row.storage_key, share, purged_at=row.original_purged_at, **point))
    return claims


def _record(sessions: sessionmaker[Session], screener: Screener, claimed: list[_Claim],
            outcomes: list[Outcome]) -> dict:
    """Write results in a second transaction; a study someone else finished meanwhile is left alone."""
    counts = {"done": 0, "error": 0, "skipped": 0}
    study_ids = [claim.study_id for claim in claimed]
    with sessions.begin() as session:
        # One locking read for the batch, in id order (the order every transaction locks studies in).
        studies = {study.id: study for study in session.scalars(
            select(Study).where(Study.id.in_(study_ids)).order_by(Study.id).with_for_update())}
        for claim, outcome in zip(claimed, outcomes):
            study_id = claim.study_id
            study = studies[study_id]
            if study.status in FINISHED:
                counts["skipped"] += 1
                continue
            study.finished_at = utcnow()
            if outcome.finding is None:
                study.status, study.error = StudyStatus.ERROR, outcome.error
                audit(session, None, "study.error", "study", study_id, reason=outcome.error)
                counts["error"] += 1
                continue
            _store_finding(session, screener, study, outcome.finding, claim)
            counts["done"] += 1
        session.flush()
        # Each radiology study's one result, from all its images read so far (studies/results.py).
        refresh_many(session, (study.study_result_id for study in studies.values() if study.study_result_id))
        resolve_duplicates(session, study_ids)  # the same file uploaded again meanwhile
    logger.info("batch of %d studies: %s", len(study_ids), counts)
    return counts


def _store_finding(session: Session, screener: Screener, study: Study, finding: Finding, claim: _Claim) -> None:
    study.status, study.error = StudyStatus.DONE, None
    session.add(Prediction(
        study_id=study.id, model_name=screener.name, model_version=screener.version,
        probability=float(finding.probability), prediction=finding.prediction,
        threshold=float(finding.threshold), site_calibration_id=claim.calibration_id,
        crop_box=[float(v) for v in finding.crop_box], details=finding.details))
    audit(session, None, "study.result", "study", study.id, prediction=finding.prediction,
          probability=round(float(finding.probability), 4), model_version=screener.version,
          site_calibration_id=claim.calibration_id)
    # DICOM scope: non-radiographs, adults and lateral-only studies are flagged out_of_scope (studies/scope.py).
    # The pixel gate's out_of_scope comes among the model's own reasons.
    reasons = scope_reasons(session, study, list(finding.reasons))
    if not reasons and finding.prediction == "NORMAL" and draw(claim.qa_share):
        reasons = [FlagReason.QA_SAMPLE]  # the department's miss rate, measured (studies/qa.py)
    if reasons:
        session.add(ReviewFlag(study_id=study.id, reasons=[str(reason) for reason in reasons]))
        audit(session, None, "study.flag", "study", study.id, reasons=[str(reason) for reason in reasons])
