"""Logging: plain lines for a terminal, JSON lines for a log collector, with request and task ids."""
import contextvars
import json
import logging

_context: contextvars.ContextVar[dict] = contextvars.ContextVar("log_context", default={})
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def bind(**fields: object) -> contextvars.Token:
    """Attach fields (request_id, task_id, batch_id …) to every log record of this request or task."""
    return _context.set({**_context.get(), **fields})


def unbind(token: contextvars.Token) -> None:
    _context.reset(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.context = _context.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the bound ids."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname,
                 "logger": record.name, "message": record.getMessage(), **getattr(record, "context", {})}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "context", {})
        return line + "".join(f" {key}={value}" for key, value in fields.items())


def configure(log_format: str, level: int) -> None:
    """Install one handler on the root logger, in the chosen format."""
    handler = logging.StreamHandler()
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else _TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Alembic announces its plugins and its database dialect at INFO on every command: noise, not news
    # (the CLI says itself when it created or migrated the database).
    for name in ("alembic.runtime.plugins", "alembic.runtime.migration"):
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
