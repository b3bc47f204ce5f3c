"""Keep secrets out of every log record and error text.

pypsrp logs whole WSMan envelopes at DEBUG: PSRP fragments travel base64-encoded inside them, and the
serialised CLIXML is logged too. A password (connection or pipeline parameter) could therefore show up in
plain text, XML-escaped, or inside a base64 blob at any of three byte alignments. Each registered secret is
expanded into all of those forms, and a log-record factory rewrites any record that contains one *when the
record is created*, so no handler, filter order or propagation setting can let it through.
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterable

from imaging.core.errors import InputError

REDACTED = "[REDACTED]"
# Shorter base64 fragments would match unrelated data too often to be useful.
_MIN_B64_CORE = 4
# A secret shorter than this cannot be told apart from ordinary text; such a password is refused anyway
# by any sane policy, and redacting every "p" would make logs useless.
MIN_SECRET_LENGTH = 4

_lock = threading.Lock()
_needles: set[str] = set()
_installed = False


def _serialised_forms(secret: str) -> set[str]:
    """The secret as it appears inside PSRP CLIXML (pypsrp escapes control chars, '_x' and XML specials)."""
    forms = {secret}
    try:
        from pypsrp.serializer import Serializer

        element = Serializer().serialize(secret)
        if element is not None and element.text:
            forms.add(element.text)
            xml = ET.tostring(element, encoding="unicode")
            inner = xml[xml.index(">") + 1 : xml.rindex("<")]
            forms.add(inner)
    except Exception:  # noqa: BLE001 - the plain form is still covered; never fail registration
        pass
    return {f for f in forms if len(f) >= MIN_SECRET_LENGTH}


def _base64_cores(data: bytes) -> set[str]:
    """Substrings of base64 text that any encoding of a blob containing ``data`` must contain.

    ``data`` can start at any byte offset; with ``k`` bytes before it (mod 3) the base64 characters that
    depend only on ``data`` are those whose 6 bits lie entirely inside it.
    """
    cores = set()
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + data + b"\0\0\0").decode("ascii")
        start = math.ceil(8 * k / 6)
        end = (8 * k + 8 * len(data)) // 6
        core = encoded[start:end]
        if len(core) >= _MIN_B64_CORE:
            cores.add(core)
    return cores


def register_secret(secret: str | None) -> None:
    """Make sure ``secret`` is replaced by ``[REDACTED]`` in every later log record and error text."""
    if not secret or len(secret) < MIN_SECRET_LENGTH:
        return
    needles: set[str] = set()
    for form in _serialised_forms(secret):
        needles.add(form)
        for encoding in ("utf-8", "utf-16-le"):
            needles |= _base64_cores(form.encode(encoding))
    with _lock:
        _needles.update(needles)
    install()


def check_secret(secret: str, *, field: str) -> str:
    """The one gate every password passes: one shorter than ``MIN_SECRET_LENGTH`` is refused (it could not be
    told apart from ordinary text, so it could not be kept out of logs); a good one is registered for
    redaction before anything can print it."""
    if len(secret) < MIN_SECRET_LENGTH:
        raise InputError(f"a password must have at least {MIN_SECRET_LENGTH} characters", field=field,
                         fix="use the account's real password (it is never stored, only kept out of logs)")
    register_secret(secret)
    return secret


def register_secrets(secrets: Iterable[str | None]) -> None:
    for secret in secrets:
        register_secret(secret)


def redact(text: str) -> str:
    """Return ``text`` with every registered secret (in any of its encodings) replaced."""
    if not text:
        return text
    with _lock:
        needles = sorted(_needles, key=len, reverse=True)
    for needle in needles:
        if needle in text:
            text = text.replace(needle, REDACTED)
    return text


def contains_secret(text: str) -> bool:
    with _lock:
        needles = list(_needles)
    return any(n in text for n in needles)


def _scrub(record: logging.LogRecord) -> logging.LogRecord:
    with _lock:
        active = bool(_needles)
    if not active:
        return record
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format string: keep the raw template, still scrubbed
        message = str(record.msg)
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and not record.exc_text:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


class RedactingFilter(logging.Filter):
    """A filter for handlers or loggers that scrubs records (belt and braces next to the record factory)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _scrub(record)
        return True


def install() -> None:
    """Wrap the process's log-record factory once so every record is scrubbed when it is created."""
    global _installed
    with _lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            return _scrub(previous(*args, **kwargs))

        logging.setLogRecordFactory(factory)
        _installed = True
