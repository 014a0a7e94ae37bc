"""`pneumoscreen screen`: the worker's pipeline, in-process, over files on disk."""
import itertools
import logging
import sys
import time
from pathlib import Path

from core.csvcells import safe_cell
from core.settings import Settings
from models.operating_point import OperatingPoint
from models.reasons import FlagReason
from studies.files import Item, walk
from studies.scope import in_scope
from worker.pipeline import Outcome, load_screener, screen_files

logger = logging.getLogger(__name__)


def screen_to_csv(paths: list[Path], settings: Settings, writer, columns: list[str],
                  point: OperatingPoint | None = None) -> str:
    """Screen everything under `paths` in batches, writing one row per input; returns a summary line.

    `point` is a department's operating point; None means the shipped one.
    """
    screener = load_screener(settings)
    writer.writerow(columns)
    items, started = walk(paths, settings.routing_rules), time.perf_counter()
    counts = {"done": 0, "error": 0, "not_applicable": 0}
    while chunk := list(itertools.islice(items, settings.batch_size)):
        readable = [item for item in chunk if item.error is None and item.not_applicable is None]
        outcomes = iter(screen_files(screener, [item.data for item in readable], [point] * len(readable)))
        for item in chunk:
            outcome = next(outcomes) if item.error is None and item.not_applicable is None else None
            row = _row(item, outcome)
            counts[row[1]] += 1
            writer.writerow(row)
        total = sum(counts.values())
        print(f"\rscreened {total} images ({total / (time.perf_counter() - started):.1f}/s)",
              end="", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - started
    total = sum(counts.values())
    return (f"\n{total} images in {elapsed:.1f} s ({total / max(elapsed, 1e-9):.1f} images/s): "
            f"{counts['done']} done, {counts['error']} error, {counts['not_applicable']} not applicable (not "
            f"screened: studies/applicability.py); model {screener.name} {screener.version} in {screener.precision}")


def _row(item: Item, outcome: Outcome | None) -> list[str]:
    if item.not_applicable is not None:  # a CT, an SR, a colour image...: accepted by the service, not screened
        return [safe_cell(item.name), "not_applicable", "", "", "", "", safe_cell(item.not_applicable)]
    error = item.error if outcome is None else outcome.error
    if error is not None:
        return [safe_cell(item.name), "error", "", "", "", "", safe_cell(error)]
    finding = outcome.finding
    reasons = [str(reason) for reason in finding.reasons]
    meta = item.meta
    if meta is not None and not in_scope(meta.modality, meta.patient_age, meta.view_position):
        # As in the worker, but file by file: no grouping into DICOM studies here.
        reasons = [FlagReason.OUT_OF_SCOPE.value]
    return [safe_cell(item.name), "done", f"{finding.probability:.4f}", finding.prediction,
            str(bool(reasons)).lower(), ",".join(reasons), ""]
