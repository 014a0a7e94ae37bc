"""The quality dashboard: each department's miss rate among unflagged NORMAL calls (QA-sample reviews) and
its drift from the validation films, week by week."""
import functools
import logging
from pathlib import Path

from flask import Blueprint, Response, abort, render_template

from core.services import current_services
from models.drift import FEATURES, REFERENCE_FILE, Reference, psi_chart_png
from studies.drift import MIN_STUDIES, weekly
from studies.qa import miss_rates
from web.auth import roles_required
from web.context import db_session

logger = logging.getLogger(__name__)
bp = Blueprint("qa", __name__)


@functools.cache
def load_reference(weights_dir: Path) -> Reference | None:
    """The drift reference shipped with the weights (read once per process)."""
    return Reference.load(weights_dir / REFERENCE_FILE)


def current_reference() -> Reference | None:
    return load_reference(current_services().settings.weights_dir)


@bp.get("/qa")
@roles_required("reviewer", "admin")
def dashboard():
    rates = miss_rates(db_session())
    reference = current_reference()
    weeks = weekly(db_session(), reference) if reference is not None else []
    departments = sorted({week.department for week in weeks})
    return render_template("qa.html", rates=rates, warnings=[rate for rate in rates if rate.warning],
                           reference=reference, weeks=weeks, departments=departments, features=FEATURES,
                           min_studies=MIN_STUDIES)


@bp.get("/qa/drift/<path:department>.png")
@roles_required("reviewer", "admin")
def drift_chart(department: str):
    reference = current_reference()
    weeks = weekly(db_session(), reference, department=department) if reference else []
    if not weeks:
        abort(404)
    psi = {name: [week.psi.get(name) for week in weeks] for name in FEATURES}
    png = psi_chart_png(f"{department}: weekly PSI against validation", [week.week for week in weeks], psi)
    return Response(png, mimetype="image/png")
