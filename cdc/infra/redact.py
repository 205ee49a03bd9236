"""Keep credentials out of every message, log line and file we write.

Two layers: patterns that hide the password part of URIs and ``password=`` keywords, and the
exact secret values registered when a connection setting is read (so a password that shows up
somewhere unexpected, e.g. quoted back in a driver error, is still hidden).
"""

from __future__ import annotations

import logging
import re
import threading
from urllib.parse import unquote

MASK = "***"

_URI_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<tail>@)", re.I)
_KEYWORD_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s&]+)", re.I)

_secrets: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Remember a secret so ``redact`` hides it wherever it appears."""
    if value and len(value) >= 3:
        with _lock:
            _secrets.add(value)
            _secrets.add(unquote(value))


def secrets_in(dsn_or_uri: str) -> list[str]:
    """The passwords written inside a connection string (URI or key=value form)."""
    found = [m.group("pw") for m in _URI_PASSWORD.finditer(dsn_or_uri) if m.group("pw")]
    found += [m.group("pw").strip("'") for m in _KEYWORD_PASSWORD.finditer(dsn_or_uri)]
    return [unquote(pw) for pw in found if pw]


def redact(text: str) -> str:
    """``text`` with every password replaced by ``***``."""
    text = _URI_PASSWORD.sub(lambda m: m.group("head") + MASK + m.group("tail"), text)
    text = _KEYWORD_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, MASK)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the rendered message (installed by the CLI on its handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
