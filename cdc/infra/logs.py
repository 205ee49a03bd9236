"""Log output for the CLI: human-readable lines or JSON objects, always password-free.

A record's structured fields are its ``extra={...}`` fields, plus, when its arguments are one
mapping (``log.info("%(rows)d rows in %(seconds).1fs", {"rows": 5, "seconds": 0.2})``), those
values: a text line shows them in its sentence, a JSON line as fields.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import orjson

from cdc.infra.redact import RedactingFilter, redact

_STANDARD_ATTRIBUTES = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def structured_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra={...}`` fields a record carries."""
    return {key: value for key, value in record.__dict__.items() if key not in _STANDARD_ATTRIBUTES}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **(dict(record.args) if isinstance(record.args, Mapping) else {}),
            **structured_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # the filter redacted the message; fields and tracebacks are redacted here
        return orjson.dumps({key: _redacted(value) for key, value in entry.items()}, default=str).decode()


def _redacted(value: Any) -> Any:
    return redact(value) if isinstance(value, str) else value


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = structured_fields(record)
        fields.pop("action", None)
        if fields:
            line += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return redact(line)


def configure(*, verbose: bool, json_format: bool) -> None:
    """Send the library's logs to stderr; only the CLI calls this."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else TextFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger("cdc")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    generator_log = logging.getLogger("generator")
    generator_log.handlers[:] = [handler]
    generator_log.setLevel(root.level)
    generator_log.propagate = False
