"""Who did something, when, and under which operation id: the marks every record and journal row carries."""

from __future__ import annotations

import getpass
import os
import uuid
from datetime import UTC, datetime


def now() -> str:
    """The current UTC time, ISO 8601 to the millisecond (journal rows, build records)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def stamp() -> str:
    """A compact UTC time for file and folder names (``20261129T201714123Z``)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")[:-4] + "Z"


def new_op_id() -> str:
    """A fresh operation id: 12 hex digits."""
    return uuid.uuid4().hex[:12]


def who() -> str:
    """The operator's login name (``uid<n>`` where there is none, as in some containers)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        return f"uid{os.getuid()}"
