"""Times in pages: UTC on the server, shown in the reader's own zone by web/static/times.js."""
from datetime import datetime

from flask import Flask
from markupsafe import Markup

from db.models import as_utc, utcnow


def when(moment) -> Markup:
    """A time in UTC, marked up so web/static/times.js shows it in the reader's own zone."""
    if moment is None:
        return Markup("")
    moment = as_utc(moment)
    return Markup('<time datetime="{}">{} UTC</time>').format(moment.isoformat(), moment.strftime("%Y-%m-%d %H:%M"))


def since(moment) -> float:
    """Seconds from `moment` to now."""
    return (utcnow() - as_utc(moment)).total_seconds()


def from_iso(text: str | None) -> datetime | None:
    """An ISO 8601 time from the JSON a page shares with the API, back to a datetime (for the `when` filter)."""
    return datetime.fromisoformat(text) if text else None


def init_times(app: Flask) -> None:
    app.add_template_filter(when, "when")
    app.add_template_filter(since, "since")
    app.add_template_filter(from_iso, "fromiso")
