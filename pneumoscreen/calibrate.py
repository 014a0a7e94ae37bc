"""`pneumoscreen calibrate`: a department's operating point from a folder of its own labelled films."""
import getpass
import logging
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings
from db.models import SiteCalibration
from db.session import one_off_session
from studies.calibrations import Assessment, assess_sample, folder_sample, save_calibration
from worker.pipeline import load_screener

logger = logging.getLogger(__name__)


@dataclass
class Calibrated:
    """The stored, active record and the assessment behind it."""

    record: SiteCalibration
    assessment: Assessment


def calibrate_folder(folder: Path, settings: Settings, department: str, miss_rate: float) -> Calibrated:
    """Screen folder/NORMAL and folder/PNEUMONIA, choose the point, store it active; ValueError says what is wrong."""
    assessment = assess_sample(load_screener(settings), folder_sample(folder), department, miss_rate)
    with one_off_session(settings.database_url, write=True) as session:
        record = save_calibration(session, department, assessment, actor_id=None, by=f"cli:{getpass.getuser()}",
                                  accept=True)
        session.flush()  # before expunge: the activation is a pending change
        session.expunge(record)
    return Calibrated(record, assessment)


def report(result: Calibrated, department: str) -> str:
    """The operating point and what the sample says about it, for a person."""
    record, choice, skipped = result.record, result.assessment.choice, result.assessment.skipped
    lines = [
        f"department {department!r}: operating point version {record.version} is now active",
        f"  threshold {choice.point.threshold:.4f} (PNEUMONIA at or above), review band from "
        f"{choice.point.band_low:.4f} (NORMAL calls in the band are flagged near_threshold)",
        f"  sample: {choice.n_pneumonia} pneumonia + {choice.n_normal} normal films "
        f"({len(skipped)} unreadable, skipped); data sha256 {record.data_sha256[:16]}...",
        f"  on this sample: sensitivity {choice.sensitivity:.3f}, specificity {choice.specificity:.3f}, "
        f"review load {choice.review_load:.1%} of NORMAL calls",
        f"  missed (pneumonia called NORMAL, no flag): {choice.missed} of {choice.n_pneumonia} = "
        f"{choice.miss_rate:.3f}; 95% upper bound {choice.miss_rate_upper:.3f}; target {choice.miss_rate_target:g} "
        "(conformal risk control: expected miss rate on new films from the same site)",
        f"  model {record.model_version}; stored {record.created_at:%Y-%m-%d %H:%M} UTC; roll back with "
        f"`pneumoscreen calibration activate --department {department!r} --version N`",
    ]
    lines += [f"  skipped {line}" for line in skipped[:20]]
    return "\n".join(lines)
