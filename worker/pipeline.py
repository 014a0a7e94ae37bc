"""The screening pipeline: decode -> lung crop -> classifier -> flags, for the worker and the CLI alike."""
import functools
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from core.storage import Storage
from db.models import FINISHED, UNFINISHED, Prediction, ReviewFlag, Study, StudyStatus, utcnow
from db.session import audit
from models.heatmap import heatmap_png
from models.imaging import ImageDecodeError, decode_image, to_png
from models.screener import Finding, Screener
from studies.duplicates import resolve_duplicates
from studies.scope import scope_reasons

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
THUMB_SIDE = 128
CROP_SIDE = 256


@dataclass
class Outcome:
    """What the pipeline made of one image: a finding, or the reason there is none."""

    finding: Finding | None = None
    image: np.ndarray | None = None
    error: str | None = None


@functools.cache
def load_screener(weights_dir: Path) -> Screener:
    """Load TensorFlow and the weights once per process, on first use (never before a fork)."""
    import tensorflow as tf

    # TensorFlow places the models on a GPU by itself when it sees one; say which it is.
    gpus = tf.config.list_physical_devices("GPU")
    logger.info("screening on %s", ", ".join(gpu.name for gpu in gpus) if gpus else "CPU")
    return Screener.load(weights_dir)


def screen_files(screener: Screener, blobs: list[bytes]) -> list[Outcome]:
    """Decode every image, then run the models once over all that decoded."""
    # Pillow releases the GIL while decoding, so two threads keep both cores busy.
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(_decode, blobs))
    good = [o for o in outcomes if o.error is None]
    if good:
        for outcome, finding in zip(good, screener.screen([o.image for o in good])):
            outcome.finding = finding
    return outcomes


def _decode(data: bytes) -> Outcome:
    try:
        return Outcome(image=decode_image(data))
    except ImageDecodeError as exc:
        return Outcome(error=str(exc))


def run_batch(sessions: sessionmaker[Session], storage: Storage, screener: Screener, study_ids: list[int]) -> dict:
    """Screen the given studies and store the results; safe to run twice on the same ids."""
    claimed = _claim(sessions, study_ids)
    blobs, missing = [], {}
    for study_id, key in claimed:
        try:
            blobs.append(storage.get(key))
        except FileNotFoundError:
            missing[study_id] = "stored file is missing"
            blobs.append(b"")
    outcomes = screen_files(screener, blobs) if claimed else []
    for (study_id, _), outcome in zip(claimed, outcomes):
        if outcome.finding is not None:
            storage.put_derived(study_id, "thumb", to_png(outcome.image, THUMB_SIDE))
            storage.put_derived(study_id, "view", to_png(outcome.image))
            storage.put_derived(study_id, "crop", to_png(outcome.finding.crop, CROP_SIDE))
            if outcome.finding.heatmap is not None:  # the workstation overlays it on the film view
                storage.put_derived(study_id, "heatmap", heatmap_png(
                    outcome.finding.heatmap, outcome.finding.crop_box, outcome.image.shape))
        elif study_id in missing:
            outcome.error = missing[study_id]
    return _record(sessions, screener, [sid for sid, _ in claimed], outcomes)


def _claim(sessions: sessionmaker[Session], study_ids: list[int]) -> list[tuple[int, str]]:
    """Mark the studies running in one short transaction; studies tried too often end in error."""
    with sessions.begin() as session:
        session.execute(
            update(Study)
            .where(Study.id.in_(study_ids), Study.status.in_(UNFINISHED),
                   Study.attempts >= MAX_ATTEMPTS)
            .values(status=StudyStatus.ERROR, finished_at=utcnow(),
                    error=f"gave up after {MAX_ATTEMPTS} attempts (worker crashed on this batch)"))
        session.execute(
            update(Study)
            .where(Study.id.in_(study_ids), Study.status.in_(UNFINISHED))
            .values(status=StudyStatus.RUNNING, started_at=utcnow(), attempts=Study.attempts + 1))
        rows = session.execute(
            select(Study.id, Study.storage_key)
            .where(Study.id.in_(study_ids), Study.status == StudyStatus.RUNNING).order_by(Study.id)).all()
    return [(row.id, row.storage_key) for row in rows]


def _record(sessions: sessionmaker[Session], screener: Screener, study_ids: list[int], outcomes: list[Outcome]) -> dict:
    """Write results in a second transaction; a study someone else finished meanwhile is left alone."""
    counts = {"done": 0, "error": 0, "skipped": 0}
    with sessions.begin() as session:
        for study_id, outcome in zip(study_ids, outcomes):
            study = session.get(Study, study_id, with_for_update=True)
            if study.status in FINISHED:
                counts["skipped"] += 1
                continue
            study.finished_at = utcnow()
            if outcome.finding is None:
                study.status, study.error = StudyStatus.ERROR, outcome.error
                audit(session, None, "study.error", "study", study_id, reason=outcome.error)
                counts["error"] += 1
                continue
            _store_finding(session, screener, study, outcome.finding)
            counts["done"] += 1
        resolve_duplicates(session, study_ids)  # the same file uploaded again meanwhile
    logger.info("batch of %d studies: %s", len(study_ids), counts)
    return counts


def _store_finding(session: Session, screener: Screener, study: Study, finding: Finding) -> None:
    study.status, study.error = StudyStatus.DONE, None
    session.add(Prediction(
        study_id=study.id, model_name=screener.name, model_version=screener.version,
        probability=float(finding.probability), prediction=finding.prediction,
        threshold=float(finding.threshold), crop_box=[float(v) for v in finding.crop_box],
        details=finding.details))
    audit(session, None, "study.result", "study", study.id, prediction=finding.prediction,
          probability=round(float(finding.probability), 4), model_version=screener.version)
    # DICOM scope: non-radiographs, adults and lateral-only studies are flagged out_of_scope (studies/scope.py).
    # The pixel gate's out_of_scope comes among the model's own reasons.
    reasons = scope_reasons(session, study, list(finding.reasons))
    if reasons:
        session.add(ReviewFlag(study_id=study.id, reasons=[str(reason) for reason in reasons]))
        audit(session, None, "study.flag", "study", study.id, reasons=[str(reason) for reason in reasons])
