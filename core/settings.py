"""The one place that reads the environment: typed settings with the embedded defaults."""
import logging
import os
import secrets
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

logger = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS_DIR = PACKAGE_ROOT / "models" / "weights"
# PNEUMOSCREEN_MODEL_PRECISION's values: models.precision.CHOICES (core imports nothing of ours; a test checks).
PRECISION_CHOICES = ("auto", "float32", "bfloat16")


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names it and says what is expected."""


@dataclass(frozen=True)
class DicomCaller:
    """A PACS or modality allowed to send to the DICOM listener, and the department its studies land in."""

    ae_title: str
    department: str
    addresses: tuple[str, ...] = ()  # empty: from any address


@dataclass(frozen=True)
class RoutingRule:
    """A site rule for DICOM instances (studies/applicability.py): when every condition set holds, the action.

    Conditions left empty/None hold for any instance; an empty string in a list stands for "absent".
    """

    action: str  # screen, ignore or refuse
    reason: str = ""  # recorded (ignore) or sent as the ErrorComment (refuse)
    status: int = 0x0122  # refuse only: the DICOM status the sender is answered with
    modality: tuple[str, ...] = ()
    sop_class: tuple[str, ...] = ()
    body_part: tuple[str, ...] = ()
    view: tuple[str, ...] = ()
    age_from: float | None = None  # years, inclusive; an unknown age never matches
    age_under: float | None = None  # years, exclusive
    for_processing: bool | None = None
    colour: bool | None = None
    has_pixels: bool | None = None
    storage_class: bool | None = None  # a standard DICOM storage SOP class (or none named)


@dataclass(frozen=True)
class Settings:
    """Everything the portal, the worker and the CLI need to know about their surroundings."""

    data_dir: Path
    database_url: str
    broker_url: str
    storage_dir: Path
    weights_dir: Path
    # None: the embedded default, a random key kept beside the database (local_secret).
    secret_key: str | None
    batch_size: int = 32
    max_upload_mb: int = 1024
    worker_pool: str = "prefork"
    # Processes that run the models in one prefork worker: two, so that while one writes its batch's results
    # or reads the next, the other keeps the cores busy (bench/run: README "Throughput").
    worker_concurrency: int = 2
    # TensorFlow threads in each of them; 0: the cores shared out among a prefork worker's processes, all the
    # cores in a solo or threads worker's one process.
    model_threads: int = 0
    # What the models compute in (models/precision.py): auto takes bfloat16 on CPUs that multiply it natively
    # (AMX) and float32 elsewhere; float32 gives the same numbers on every machine.
    model_precision: str = "auto"
    secure_cookies: bool = False
    # A portal session ends after this many minutes without a request.
    session_idle_minutes: int = 30
    # Reverse proxies in front of the portal whose X-Forwarded-For/-Proto are trusted (0: none, the default).
    proxy_hops: int = 0
    # DICOM listener: a study sent over C-STORE is complete after this many quiet seconds.
    dicom_quiet_s: int = 10
    # Who may send to the DICOM listener (PNEUMOSCREEN_DICOM_CALLERS); nobody when empty.
    dicom_callers: tuple[DicomCaller, ...] = ()
    # Sweeper (worker/sweeper.py): how often, and when a queued / running study counts as lost.
    sweep_interval_s: int = 60
    stale_queued_s: int = 120
    stale_running_s: int = 600
    # Each claiming worker process heartbeats this often; three missed beats and its studies are sent again.
    heartbeat_s: int = 5
    # Share of unflagged NORMAL calls sent to review as quality-check samples (a department may set its own).
    qa_share: float = 0.02
    # DICOM originals are stored de-identified (models.dicom.deidentify); off: stored exactly as received.
    deidentify: bool = True
    # Stored originals of studies finished this many days ago are deleted daily by the sweeper; None: kept forever.
    retention_days: int | None = None
    # Site rules tried before the built-in ones for each DICOM instance (PNEUMOSCREEN_ROUTING_RULES, a JSON file).
    routing_rules: tuple[RoutingRule, ...] = ()

    @property
    def embedded(self) -> bool:
        """True when running without external services (SQLite and the filesystem broker)."""
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    def threads_per_model_process(self) -> int:
        """TensorFlow threads for each process that runs the models; 0 leaves TensorFlow its own (all cores)."""
        if self.model_threads or self.worker_pool != "prefork":
            return self.model_threads
        return max(1, len(os.sched_getaffinity(0)) // self.worker_concurrency)

    def with_overrides(self, overrides: Mapping[str, object] | None) -> "Settings":
        return replace(self, **dict(overrides or {}))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        """Read PNEUMOSCREEN_* / DATABASE_URL / REDIS_URL; unset means the embedded default."""
        env = os.environ if env is None else env
        data_dir = Path(env.get("PNEUMOSCREEN_DATA_DIR", "var")).resolve()
        database_url = _database_url(env.get("DATABASE_URL") or f"sqlite:///{data_dir / 'pneumoscreen.db'}")
        broker_url = env.get("REDIS_URL") or "filesystem://"
        if not broker_url.startswith(("redis://", "rediss://", "filesystem://")):
            raise ConfigError(f"REDIS_URL must start with redis:// or rediss://, got {broker_url!r}")
        model_precision = env.get("PNEUMOSCREEN_MODEL_PRECISION", "auto")
        if model_precision not in PRECISION_CHOICES:
            raise ConfigError(f"PNEUMOSCREEN_MODEL_PRECISION must be {', '.join(PRECISION_CHOICES)}, "
                              f"got {model_precision!r}")
        worker_pool = env.get("PNEUMOSCREEN_WORKER_POOL", "prefork")
        if worker_pool not in ("prefork", "solo", "threads"):
            raise ConfigError(f"PNEUMOSCREEN_WORKER_POOL must be prefork, solo or threads, got {worker_pool!r}")
        return cls(
            data_dir=data_dir,
            database_url=database_url,
            broker_url=broker_url,
            storage_dir=Path(env.get("PNEUMOSCREEN_STORAGE_DIR", data_dir / "studies")).resolve(),
            weights_dir=Path(env.get("PNEUMOSCREEN_WEIGHTS_DIR", DEFAULT_WEIGHTS_DIR)).resolve(),
            secret_key=env.get("SECRET_KEY") or None,
            batch_size=_int(env, "PNEUMOSCREEN_BATCH_SIZE", 32, 1, 1024),
            max_upload_mb=_int(env, "PNEUMOSCREEN_MAX_UPLOAD_MB", 1024, 1, 100_000),
            model_threads=_int(env, "PNEUMOSCREEN_MODEL_THREADS", 0, 0, 1024),
            model_precision=model_precision,
            worker_pool=worker_pool,
            worker_concurrency=_int(env, "PNEUMOSCREEN_WORKER_CONCURRENCY", 2 if worker_pool == "prefork" else 1,
                                    1, 64),
            secure_cookies=_bool(env, "PNEUMOSCREEN_SECURE_COOKIES", False),
            session_idle_minutes=_int(env, "PNEUMOSCREEN_SESSION_IDLE_MINUTES", 30, 1, 24 * 60),
            proxy_hops=_int(env, "PNEUMOSCREEN_PROXY_HOPS", 0, 0, 5),
            dicom_quiet_s=_int(env, "PNEUMOSCREEN_DICOM_QUIET_S", 10, 1, 3600),
            dicom_callers=dicom_callers(env.get("PNEUMOSCREEN_DICOM_CALLERS", "")),
            sweep_interval_s=_int(env, "PNEUMOSCREEN_SWEEP_INTERVAL_S", 60, 1, 86_400),
            stale_queued_s=_int(env, "PNEUMOSCREEN_STALE_QUEUED_S", 120, 1, 86_400),
            stale_running_s=_int(env, "PNEUMOSCREEN_STALE_RUNNING_S", 600, 1, 86_400),
            heartbeat_s=_int(env, "PNEUMOSCREEN_HEARTBEAT_S", 5, 1, 3600),
            qa_share=_share(env, "PNEUMOSCREEN_QA_SHARE", 0.02),
            routing_rules=routing_rules(env.get("PNEUMOSCREEN_ROUTING_RULES", "")),
            deidentify=_bool(env, "PNEUMOSCREEN_DEIDENTIFY", True),
            retention_days=_int(env, "PNEUMOSCREEN_RETENTION_DAYS", None, 1, 36_500),
        )


def log_format_from_env(env: Mapping[str, str] | None = None) -> str:
    """PNEUMOSCREEN_LOG_FORMAT: `text` (default) for people, `json` for log collectors."""
    value = (os.environ if env is None else env).get("PNEUMOSCREEN_LOG_FORMAT", "text")
    if value not in ("text", "json"):
        raise ConfigError(f"PNEUMOSCREEN_LOG_FORMAT must be text or json, got {value!r}")
    return value


def _database_url(url: str) -> str:
    if url.startswith(("postgres://", "postgresql://")):
        # psycopg 3 is the driver we ship; SQLAlchemy would otherwise look for psycopg2.
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith(("sqlite://", "postgresql+psycopg://")):
        return url
    raise ConfigError(f"DATABASE_URL must be a postgresql:// or sqlite:// URL, got {url.split('://')[0]!r}")


def _int(env: Mapping[str, str], name: str, default: int | None, low: int, high: int) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def is_ae_title(title: str) -> bool:
    """A DICOM AE title (PS3.5 VR AE): 1 to 16 printable ASCII characters, no backslash (the one rule for callers,
    the PACS we send to and our own calling title)."""
    return 1 <= len(title) <= 16 and all(" " <= c <= "~" and c != "\\" for c in title)


def dicom_callers(raw: str) -> tuple[DicomCaller, ...]:
    """PNEUMOSCREEN_DICOM_CALLERS: `AE=Department[@address,address];...`, e.g. `PACS1=Radiology@10.1.2.3;CR2=ICU`."""
    callers = []
    for entry in filter(None, (part.strip() for part in raw.split(";"))):
        title, sep, rest = entry.partition("=")
        department, _, addresses = rest.partition("@")
        title, department = title.strip(), department.strip()
        if not sep or not title or not department:
            raise ConfigError(f"PNEUMOSCREEN_DICOM_CALLERS entry {entry!r} must read AE=Department[@address,...]")
        if not is_ae_title(title):
            raise ConfigError(f"PNEUMOSCREEN_DICOM_CALLERS: {title!r} is not a DICOM AE title (1-16 characters)")
        if any(caller.ae_title == title for caller in callers):
            raise ConfigError(f"PNEUMOSCREEN_DICOM_CALLERS names {title!r} twice")
        callers.append(DicomCaller(title, department, tuple(a.strip() for a in addresses.split(",") if a.strip())))
    return tuple(callers)


_RULE_LISTS = ("modality", "sop_class", "body_part", "view")
_RULE_FLAGS = ("for_processing", "colour", "has_pixels", "storage_class")
_REFUSE_STATUSES = {"0x0122": 0x0122, "0xA900": 0xA900, "0xC000": 0xC000}


def routing_rules(path: str) -> tuple[RoutingRule, ...]:
    """PNEUMOSCREEN_ROUTING_RULES: a JSON file holding a list of rules, tried in order before the built-in ones,
    e.g. `[{"modality": ["OT"], "body_part": ["CHEST"], "action": "screen"},
    {"age_from": 16, "action": "ignore", "reason": "adult: this site screens children only"}]`."""
    import json

    if not path.strip():
        return ()
    name = "PNEUMOSCREEN_ROUTING_RULES"
    try:
        entries = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{name}: cannot read {path!r}: {exc.strerror}") from None
    except ValueError as exc:
        raise ConfigError(f"{name}: {path!r} is not valid JSON: {exc}") from None
    if not isinstance(entries, list) or not 1 <= len(entries) <= 100:
        raise ConfigError(f"{name}: {path!r} must hold a JSON list of 1 to 100 rules")
    return tuple(_routing_rule(f"{name} rule {number}", entry) for number, entry in enumerate(entries, 1))


def _routing_rule(where: str, entry: object) -> RoutingRule:
    """One rule object, checked key by key; ConfigError names the rule and the key."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a JSON object, got {entry!r}")
    known = {"action", "reason", "status", "age_from", "age_under", *_RULE_LISTS, *_RULE_FLAGS}
    if unknown := sorted(set(entry) - known):
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    action, reason = entry.get("action"), entry.get("reason", "")
    if action not in ("screen", "ignore", "refuse"):
        raise ConfigError(f"{where}: action must be screen, ignore or refuse, got {action!r}")
    if action == "screen" and ("reason" in entry or "status" in entry):
        raise ConfigError(f"{where}: a screen rule takes no reason or status")
    if action != "screen" and (not isinstance(reason, str) or not 1 <= len(reason.strip()) <= 64
                               or not reason.isprintable()):
        raise ConfigError(f"{where}: an {action} rule needs a reason of 1-64 printable characters")
    if "status" in entry and (action != "refuse" or entry["status"] not in _REFUSE_STATUSES):
        raise ConfigError(f"{where}: status is for refuse rules only, one of {', '.join(_REFUSE_STATUSES)}")
    values: dict = {"action": action, "reason": reason.strip(),
                    "status": _REFUSE_STATUSES[entry.get("status", "0x0122")]}
    for key in _RULE_LISTS:
        if key in entry:
            items = entry[key]
            if not isinstance(items, list) or not items or not all(
                    isinstance(item, str) and len(item) <= 64 and item.isprintable() for item in items):
                raise ConfigError(f"{where}: {key} must be a non-empty list of strings (at most 64 characters)")
            values[key] = tuple(item.strip().upper() for item in items)
    for uid in values.get("sop_class", ()):
        if not all(part.isdigit() and (part == "0" or part[0] != "0") for part in uid.split(".")):
            raise ConfigError(f"{where}: sop_class {uid!r} is not a UID (e.g. 1.2.840.10008.5.1.4.1.1.7)")
    for key in ("age_from", "age_under"):
        if key in entry:
            age = entry[key]
            if isinstance(age, bool) or not isinstance(age, (int, float)) or not 0 <= age <= 150:
                raise ConfigError(f"{where}: {key} must be a number of years from 0 to 150, got {age!r}")
            values[key] = float(age)
    for key in _RULE_FLAGS:
        if key in entry:
            if not isinstance(entry[key], bool):
                raise ConfigError(f"{where}: {key} must be true or false, got {entry[key]!r}")
            values[key] = entry[key]
    return RoutingRule(**values)


def _share(env: Mapping[str, str], name: str, default: float) -> float:

    raw = env.get(name, "").strip()
    if raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a share between 0 and 1 (e.g. 0.02), got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be between 0 and 1, got {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be on or off (1/0, true/false, yes/no), got {env[name]!r}")


def local_secret(data_dir: Path) -> str:
    """Embedded default: a random key kept beside the database, so sessions survive restarts."""
    path = data_dir / "secret_key"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()
