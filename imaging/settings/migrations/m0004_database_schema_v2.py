"""v4 -> v5: the experiment database moves to schema 2 (a post-boot step).

Schema 2 adds an index on the run-control events table and a column for the sample environment; both
are needed by the release that introduces settings v5. The settings part is done before boot (the
connection file records the schema the database must have); the database itself lives on the Var volume
and can only be upgraded with the guest running, so the provider runs :func:`guest_command` in the guest
after boot and then records completion on Var (see ``imaging.settings.migrations.post_boot_steps``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from imaging.settings.migrations._text import MigrationError, write_text

FROM_VERSION = 4
TO_VERSION = 5
DESCRIPTION = "Move the experiment database to schema 2 (events index, sample environment column)"
POST_BOOT = True

JSON_FILE = "database/connection.json"
SCHEMA = 2
MYSQL = r"C:\Instrument\Apps\MySQL\bin\mysql.exe"
OPTIONS_FILE = r"C:\Instrument\Var\mysql\client.cnf"  # holds the password; never in settings or git
SQL = (
    "CREATE INDEX IF NOT EXISTS ix_events_time ON run_events (event_time); "
    "ALTER TABLE runs ADD COLUMN IF NOT EXISTS sample_environment VARCHAR(64) NULL; "
    "UPDATE schema_info SET version = 2 WHERE version < 2;"
)


def migrate(tree: Path) -> None:
    path = Path(tree) / JSON_FILE
    if not path.exists():
        return
    conn = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(conn, dict):
        raise MigrationError(f"{JSON_FILE} does not hold a JSON object")
    conn["schema_version"] = SCHEMA
    write_text(path, json.dumps(conn, indent=2, sort_keys=True) + "\n")


def check(tree: Path) -> None:
    path = Path(tree) / JSON_FILE
    if path.exists() and json.loads(path.read_text(encoding="utf-8")).get("schema_version") != SCHEMA:
        raise MigrationError(f"{JSON_FILE} does not record schema_version {SCHEMA}")


def guest_command(settings: Mapping[str, bytes]) -> list[str]:
    """The command the guest runs to upgrade its database, built from the settings it now runs.

    Every statement is idempotent (IF NOT EXISTS, a guarded UPDATE), so running it twice is harmless.
    """
    raw = settings.get(JSON_FILE)
    if raw is None:
        raise MigrationError(f"{JSON_FILE} is missing from the rendered settings; the schema step needs it")
    conn = json.loads(raw)
    return [MYSQL, f"--defaults-extra-file={OPTIONS_FILE}", f"--host={conn['host']}", f"--port={conn['port']}",
            f"--user={conn['user']}", f"--database={conn['database']}", f"--execute={SQL}"]
