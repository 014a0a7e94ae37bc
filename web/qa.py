"""The quality dashboard: each department's miss rate among unflagged NORMAL calls, from QA-sample reviews."""
import logging

from flask import Blueprint, render_template

from studies.qa import miss_rates
from web.auth import roles_required
from web.context import db_session

logger = logging.getLogger(__name__)
bp = Blueprint("qa", __name__)


@bp.get("/qa")
@roles_required("reviewer", "admin")
def dashboard():
    rates = miss_rates(db_session())
    return render_template("qa.html", rates=rates, warnings=[rate for rate in rates if rate.warning])
