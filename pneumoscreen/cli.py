"""The `pneumoscreen` command: run the portal and workers, manage users, screen files, train."""
import csv
import getpass
import logging
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import click

from core.logs import configure as configure_logging
from core.services import QUEUE, services_of
from core.settings import PACKAGE_ROOT, ConfigError, Settings, log_format_from_env
from db.session import one_off_session

logger = logging.getLogger(__name__)
SHARED_DATA = PACKAGE_ROOT.parent / "shared" / "data"
WEB_CONNECTIONS, WEB_IDLE_S = 200, 30
CSV_COLUMNS = ["file", "status", "probability", "prediction", "flagged", "flag_reason", "error"]


weights_out = click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
                           help="Where to save the weights [default: the shipped weights folder].")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except ConfigError as exc:
        raise click.ClickException(f"bad setting: {exc}") from None


def _ready_database(settings: Settings) -> None:
    """The embedded SQLite database is created or migrated on first use; PostgreSQL must be migrated first."""
    from sqlalchemy.exc import SQLAlchemyError

    from db.migrate import current, heads

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        revision = current(settings.database_url)
        if revision in heads():
            return
        if not settings.database_url.startswith("sqlite"):
            raise click.ClickException("the database is not at the newest schema: run `pneumoscreen db upgrade`")
        _upgrade(settings.database_url)
        click.echo(f"{'created' if revision is None else 'migrated'} the database {settings.database_url}", err=True)
    except SQLAlchemyError as exc:
        raise click.ClickException(f"cannot use the database ({type(exc).__name__}); check DATABASE_URL") from None


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log more.")
def main(verbose: bool) -> None:
    """pneumoscreen: pneumonia screening for chest X-rays."""
    try:
        log_format = log_format_from_env()
    except ConfigError as exc:
        raise click.ClickException(f"bad setting: {exc}") from None
    configure_logging(log_format, logging.DEBUG if verbose else logging.INFO)


@main.group("db")
def db_group() -> None:
    """Database schema."""


@db_group.command("upgrade")
def db_upgrade() -> None:
    """Create or migrate the database to the newest schema."""
    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _upgrade(settings.database_url)
    click.echo("database is at the newest schema")


def _upgrade(url: str) -> None:
    """Migrate, then compute the study results a migration left to be computed (studies.results)."""
    from db.migrate import upgrade
    from db.session import one_off_session
    from studies.results import refresh_backfilled

    upgrade(url)
    with one_off_session(url, write=True) as session:
        refreshed = refresh_backfilled(session)
    if refreshed:
        click.echo(f"computed {refreshed} study results", err=True)


@main.group("users")
def users_group() -> None:
    """User accounts."""


@users_group.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["uploader", "reviewer", "admin"]), required=True)
@click.option("--password-stdin", is_flag=True, help="Read a login password from the first line of stdin.")
@click.option("--department", default=None, help="The user's department (created if needed).")
def users_create(name: str, role: str, password_stdin: bool, department: str | None) -> None:
    """Create a user and print an API token (shown once)."""
    # Only the line end goes: the password is used exactly as typed (db.accounts.password_problem).
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    settings = _settings()
    _ready_database(settings)
    try:
        token = _create_user(settings, name, role, password, department)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"created {role} {name!r}; API token (shown once, keep it safe):\n{token}")


def _create_user(settings: Settings, name: str, role: str, password: str | None,
                 department: str | None = None) -> str:
    from db.accounts import create_user, ensure_department, issue_token

    with one_off_session(settings.database_url, write=True) as session:
        department_id = ensure_department(session, department).id if department else None
        return issue_token(session, create_user(session, name, role, password, department_id=department_id))


@main.command("web")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def web(host: str, port: int) -> None:
    """Serve the portal and API (waitress)."""
    from waitress import serve

    from pneumoscreen.app import create_app

    settings = _settings()
    _ready_database(settings)
    app = create_app(settings=settings)
    click.echo(f"portal on http://{host}:{port}/")
    # Bounded connections and an idle timeout: slow or idle clients cannot hold every thread (put a reverse
    # proxy with its own limits and TLS in front in production: README, SECURITY.md).
    # waitress answers a body over its own limit with a bare page before the app sees it: its limit is twice the
    # app's, so a request over PNEUMOSCREEN_MAX_UPLOAD_MB gets the portal's 413 page (web/errors.py).
    serve(app, host=host, port=port, threads=8, max_request_body_size=2 * app.config["MAX_CONTENT_LENGTH"],
          connection_limit=WEB_CONNECTIONS, channel_timeout=WEB_IDLE_S, cleanup_interval=10)


@main.command("worker")
def worker() -> None:
    """Run a Celery worker that screens queued studies."""
    settings = _settings()
    _ready_database(settings)
    from pneumoscreen.celery_app import celery_app  # builds the app from the environment

    celery_app.worker_main(["worker", "--loglevel=INFO", "-Q", QUEUE,
                            "--pool", settings.worker_pool,
                            "--concurrency", str(settings.worker_concurrency)])


@main.command("dicom-listen")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; only behind a firewall or with --tls-*).")
@click.option("--port", default=11112, show_default=True, type=int)
@click.option("--ae-title", default="PNEUMOSCREEN", show_default=True)
@click.option("--quiet-seconds", type=int, default=None,
              help="A study is complete after this long without a new image [default: PNEUMOSCREEN_DICOM_QUIET_S, 10].")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Serve DICOM over TLS with this certificate (PEM) ...")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="... and this private key (PEM).")
@click.option("--tls-client-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Also require callers' certificates signed by this CA (PEM).")
def dicom_listen(host: str, port: int, ae_title: str, quiet_seconds: int | None, tls_cert: Path | None,
                 tls_key: Path | None, tls_client_ca: Path | None) -> None:
    """Receive studies from the PACS and modalities in PNEUMOSCREEN_DICOM_CALLERS (C-ECHO, C-STORE) and queue them."""
    from pneumoscreen.app import create_app
    from pneumoscreen.dicom_listen import Listener, tls_context

    settings = _settings()
    _ready_database(settings)
    if bool(tls_cert) != bool(tls_key):
        raise click.ClickException("TLS needs both --tls-cert and --tls-key")
    app = create_app(settings=settings)
    try:
        context = tls_context(tls_cert, tls_key, tls_client_ca) if tls_cert else None
        listener = Listener(services_of(app), ae_title, port, host, quiet_seconds, ssl_context=context)
    except (ValueError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    callers = ", ".join(f"{c.ae_title} -> {c.department}" for c in settings.dicom_callers)
    click.echo(f"DICOM listener {ae_title} on {host}:{port}{' (TLS)' if context else ''} for {callers}; "
               "Ctrl-C stops it")
    # `docker stop` sends SIGTERM: stop as on Ctrl-C, queueing what has arrived.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        listener.start()
    except KeyboardInterrupt:
        pass


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt


@main.command("up")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def up(host: str, port: int) -> None:
    """Portal and one worker in the foreground; Ctrl-C stops both."""
    settings = _settings()
    from db.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)  # PostgreSQL too: `up` is the one-command start
    _first_admin(settings)
    command = [sys.executable, "-m", "pneumoscreen"]
    children = [subprocess.Popen(command + ["web", "--host", host, "--port", str(port)]),
                subprocess.Popen(command + ["worker"])]
    stop = lambda *_: [child.terminate() for child in children if child.poll() is None]  # noqa: E731
    signal.signal(signal.SIGTERM, stop)
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    stop()
    for child in children:
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            child.kill()
    click.echo("pneumoscreen stopped")


def _first_admin(settings: Settings) -> None:
    """On an empty database, make an admin so a person can log in, and say how."""
    from sqlalchemy import func, select

    from db.models import User

    with one_off_session(settings.database_url) as session:
        has_users = session.scalar(select(func.count()).select_from(User)) > 0
    if has_users:
        return
    password = secrets.token_urlsafe(12)
    token = _create_user(settings, "admin", "admin", password)
    click.echo(f"\n  first start: created user 'admin' with password {password}\n"
               f"  and API token {token}\n  (shown once; add people with `pneumoscreen users create`)\n")


@main.command("screen")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write results here instead of stdout.")
@click.option("--department", default=None, help="Use this department's operating point (see `calibrate`).")
def screen(paths: tuple[Path, ...], csv_path: Path | None, department: str | None) -> None:
    """Screen images, folders (recursive) and .zip files in-process; one CSV row per input."""
    from pneumoscreen.screening import screen_to_csv

    settings = _settings()
    point = _department_point(settings, department) if department else None
    out = csv_path.open("w", newline="") if csv_path else sys.stdout
    try:
        summary = screen_to_csv(list(paths), settings, csv.writer(out), CSV_COLUMNS, point)
    finally:
        if csv_path:
            out.close()
    click.echo(summary, err=True)


def _department_point(settings: Settings, department: str):
    """The department's active operating point; a clear error when it has none."""
    from studies.calibrations import active_for, point_of

    _ready_database(settings)
    with one_off_session(settings.database_url) as session:
        record = active_for(session, department)
        if record is None:
            raise click.ClickException(f"department {department!r} has no operating point: "
                                       f"run `pneumoscreen calibrate DIR --department {department!r}` first")
        click.echo(f"department {department!r}: operating point version {record.version} "
                   f"(threshold {record.threshold:.4f}, band from {record.band_low:.4f})", err=True)
        return point_of(record)


@main.command("calibrate")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--department", required=True, help="The department the point is for (created if needed).")
@click.option("--miss-rate", default=0.02, show_default=True, type=click.FloatRange(0.001, 0.5),
              help="Highest acceptable share of pneumonia films called NORMAL with no flag.")
@click.option("--roc", "roc_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the ROC curve of the sample here (PNG).")
def calibrate(folder: Path, department: str, miss_rate: float, roc_path: Path | None) -> None:
    """Choose a department's threshold and review band from labelled films in FOLDER/NORMAL and FOLDER/PNEUMONIA."""
    from pneumoscreen.calibrate import calibrate_folder, report

    settings = _settings()
    _ready_database(settings)
    try:
        result = calibrate_folder(folder, settings, department, miss_rate)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if roc_path:
        roc_path.write_bytes(result.record.roc_png)
    click.echo(report(result, department))


@main.group("calibration")
def calibration_group() -> None:
    """Departments' operating points."""


@calibration_group.command("list")
@click.option("--department", required=True)
def calibration_list(department: str) -> None:
    """A department's operating points, newest first; * marks the active one."""
    from studies.calibrations import history

    settings = _settings()
    _ready_database(settings)
    with one_off_session(settings.database_url) as session:
        rows = history(session, department)
        if not rows:
            raise click.ClickException(f"department {department!r} has no operating points")
        for row in rows:
            click.echo(f"{'*' if row.active else ' '} v{row.version}  threshold {row.threshold:.4f}  band from "
                       f"{row.band_low:.4f}  miss rate target {row.miss_rate_target:g}  "
                       f"n={row.n_pneumonia}+{row.n_normal}  {row.created_at:%Y-%m-%d %H:%M}")


@calibration_group.command("activate")
@click.option("--department", required=True)
@click.option("--version", required=True, type=int)
def calibration_activate(department: str, version: int) -> None:
    """Make VERSION the department's active operating point (roll back or forward)."""
    from studies.calibrations import activate

    settings = _settings()
    _ready_database(settings)
    try:
        with one_off_session(settings.database_url, write=True) as session:
            activate(session, department, version, None, f"cli:{getpass.getuser()}")
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"department {department!r}: operating point version {version} is now active")


@main.group("departments")
def departments_group() -> None:
    """Departments."""


@departments_group.command("qa-share")
@click.argument("department")
@click.argument("share")
def departments_qa_share(department: str, share: str) -> None:
    """Set the share of DEPARTMENT's unflagged NORMAL calls drawn for quality-check review ('default' to clear)."""
    from db.accounts import ensure_department
    from db.session import audit
    from studies.qa import set_share

    settings = _settings()
    _ready_database(settings)
    try:
        value = None if share == "default" else float(share)
        with one_off_session(settings.database_url, write=True) as session:
            found = ensure_department(session, department)
            set_share(session, found, value)
            audit(session, None, "department.qa_share", "department", found.id, qa_share=value,
                  by=f"cli:{getpass.getuser()}")
    except ValueError as exc:
        raise click.ClickException(f"share must be a number between 0 and 1 or 'default' ({exc})") from None
    shown = f"{value:g}" if value is not None else f"the service default ({settings.qa_share:g})"
    click.echo(f"department {department!r}: QA share {shown}")


@departments_group.command("outbound")
@click.argument("department")
@click.option("--dicom", metavar="AE@HOST:PORT", help="The PACS that stores the results (DICOM C-STORE).")
@click.option("--dicom-send", metavar="KINDS", help="What the PACS gets: sr, sc or sr,sc [default: sr,sc].")
@click.option("--hl7", metavar="HOST:PORT", help="The RIS that takes HL7 v2 ORU^R01 over MLLP.")
@click.option("--hl7-application", metavar="NAME", help="MSH-5, the receiving application [default: RIS].")
@click.option("--hl7-facility", metavar="NAME", help="MSH-6, the receiving facility [default: none].")
@click.option("--fhir", metavar="URL", help="The FHIR server's base URL (http:// or https://).")
@click.option("--fhir-token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file holding the FHIR server's bearer token (never on the command line).")
@click.option("--clear", is_flag=True, help="Forget every destination first; alone, results go nowhere.")
def departments_outbound(department: str, clear: bool, fhir_token_file: Path | None, **changes: str | None) -> None:
    """Where DEPARTMENT's results go (PACS, RIS, FHIR server); without options, show it. Audited."""
    from studies.outbound import department_named, describe, edited, set_config

    settings = _settings()
    _ready_database(settings)
    token = fhir_token_file.read_text(errors="replace") if fhir_token_file else None
    try:
        with one_off_session(settings.database_url, write=True) as session:
            found = department_named(session, department)
            if clear or token is not None or any(value is not None for value in changes.values()):
                set_config(session, found, edited(found.outbound, clear=clear, fhir_token=token, **changes), None,
                           f"cli:{getpass.getuser()}")
            lines = describe(found.outbound)
    except (LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"department {department!r}:\n  " + "\n  ".join(lines))


@main.group("outbound")
def outbound_group() -> None:
    """Results on their way to the PACS, RIS and FHIR server."""


@outbound_group.command("list")
@click.option("--state", type=click.Choice(["pending", "sending", "sent", "superseded", "failed"]), default=None)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
def outbound_list(state: str | None, limit: int) -> None:
    """The newest outbound messages: id, state, kind, study result and version, attempts, destination, error."""
    from studies.outbound import messages

    settings = _settings()
    _ready_database(settings)
    with one_off_session(settings.database_url) as session:
        for m in messages(session, state, limit):
            when = f"sent {m.sent_at:%Y-%m-%d %H:%M:%S}" if m.sent_at else f"next {m.next_attempt_at:%Y-%m-%d %H:%M:%S}"
            click.echo(f"{m.id:>7}  {m.state:<10} {m.kind:<4} result {m.study_result_id} v{m.result_version}  "
                       f"attempts {m.attempts}  {m.destination}  {when}"
                       + (f"  error: {m.last_error[:200]}" if m.last_error and m.state != "sent" else ""))


@outbound_group.command("retry")
@click.argument("message_id", type=int)
def outbound_retry(message_id: int) -> None:
    """Send a failed message again (a fresh set of attempts, from now). Audited."""
    from studies.outbound import retry

    settings = _settings()
    _ready_database(settings)
    try:
        with one_off_session(settings.database_url, write=True) as session:
            message = retry(session, message_id, None, f"cli:{getpass.getuser()}")
            what = f"{message.kind} of result {message.study_result_id} v{message.result_version}"
    except (LookupError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"message {message_id} ({what}) queued again; a worker sends it within seconds")


@main.command("purge")
@click.option("--originals-older-than", "days", required=True, type=click.IntRange(min=1), metavar="DAYS",
              help="Delete the stored original files of studies finished more than DAYS days ago.")
@click.option("--derived", is_flag=True, help="Also delete those studies' pictures (film view, thumbnail, crop, "
                                              "heatmap): the portal then shows none.")
@click.option("--dry-run", is_flag=True, help="Only count what would be deleted.")
def purge(days: int, derived: bool, dry_run: bool) -> None:
    """Retention: delete old originals; results, rows and (without --derived) pictures stay. Audited."""
    from core.storage import Storage
    from db.session import make_engine, make_session_factory
    from studies.retention import purge_originals

    settings = _settings()
    _ready_database(settings)
    engine = make_engine(settings.database_url)
    try:
        report = purge_originals(make_session_factory(engine), Storage(settings.storage_dir), days, dry_run=dry_run,
                                 derived=derived, by=f"cli:{getpass.getuser()}")
    finally:
        engine.dispose()
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb} {report.files} original files ({report.bytes / 2**20:.1f} MB) of {report.studies} studies "
               f"finished more than {days} days ago, and {report.derived} pictures; kept {report.kept_in_use} "
               f"still in use and {report.kept_recent} handed over again since")


@main.command("evaluate")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def evaluate(data: Path, as_json: bool) -> None:
    """Screen DATA/NORMAL and DATA/PNEUMONIA; print AUC, accuracy, sensitivity, specificity and flag shares."""
    import json

    from training.evaluate import evaluate_folder, format_report
    from worker.pipeline import load_screener

    try:
        metrics = evaluate_folder(data, load_screener(_settings()))
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(json.dumps(metrics, indent=2) if as_json else format_report(metrics))


@main.command("train-segmenter")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=SHARED_DATA / "lung-masks", show_default=True)
@weights_out
@click.option("--epochs", default=6, show_default=True, type=int)
def train_segmenter(data: Path, out: Path | None, epochs: int) -> None:
    """Train the lung segmenter on image/mask pairs."""
    from training.segmenter import train_segmenter as train

    click.echo(train(data, out or _settings().weights_dir, epochs=epochs))


@main.command("train")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=SHARED_DATA / "kermany-train", show_default=True)
@weights_out
@click.option("--epochs", default=16, show_default=True, type=int)
@click.option("--member", default=0, show_default=True, type=click.IntRange(min=0),
              help="Ensemble member to train: 0 starts a new ensemble, N > 0 adds member N.")
def train(data: Path, out: Path | None, epochs: int, member: int) -> None:
    """Train one classifier (ensemble member) on lung crops, then recalibrate the ensemble.

    Needs the segmenter in --out.
    """
    from training.commands import train_member

    out = out or _settings().weights_dir
    try:
        click.echo(train_member(data, out, out / "segmenter.keras", epochs=epochs, member=member))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
