"""v3 -> v4: the [Database] section of config/instrument.ini becomes database/connection.json.

The new database client reads typed JSON (the port is a number, not text) and the connection settings
no longer sit in the file every other program parses. Keys host, port, database and user are required;
any further key is carried over as text. The section is then removed from instrument.ini.
"""

from __future__ import annotations

import json
from pathlib import Path

from imaging.settings.migrations._text import MigrationError, join_sections, parse_ini, split_sections, write_text

FROM_VERSION = 3
TO_VERSION = 4
DESCRIPTION = "Convert the [Database] section of config/instrument.ini into database/connection.json"

INI = "config/instrument.ini"
JSON_FILE = "database/connection.json"
SECTION = "Database"
REQUIRED = ("host", "port", "database", "user")


def _connection(values: dict[str, str]) -> dict[str, object]:
    missing = [k for k in REQUIRED if not values.get(k, "").strip()]
    if missing:
        raise MigrationError(f"{INI}: [{SECTION}] lacks {', '.join(missing)}; add them, then rerun")
    port_text = values["port"].strip()
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise MigrationError(f"{INI}: [{SECTION}] port must be a number from 1 to 65535, got {port_text!r}")
    out: dict[str, object] = {k: v.strip() for k, v in values.items()}
    out["port"] = int(port_text)
    return out


def migrate(tree: Path) -> None:
    ini = Path(tree) / INI
    if not ini.exists():
        return
    text = ini.read_text(encoding="utf-8")
    parser = parse_ini(text, file=INI)
    if not parser.has_section(SECTION):
        return  # converted already (a rerun), or this instrument never had the section
    conn = _connection(dict(parser.items(SECTION)))
    target = Path(tree) / JSON_FILE
    wanted = json.dumps(conn, indent=2, sort_keys=True) + "\n"
    if target.exists() and json.loads(target.read_text(encoding="utf-8")) != conn:
        raise MigrationError(f"{JSON_FILE} already exists with other values than [{SECTION}] in {INI}; "
                             "decide which is right, delete the other, then rerun")
    write_text(target, wanted)  # first the new file, then drop the section: a failure in between reruns cleanly
    write_text(ini, join_sections([s for s in split_sections(text) if s.name != SECTION]))


def check(tree: Path) -> None:
    ini = Path(tree) / INI
    if ini.exists() and parse_ini(ini.read_text(encoding="utf-8"), file=INI).has_section(SECTION):
        raise MigrationError(f"{INI} still has a [{SECTION}] section")
    target = Path(tree) / JSON_FILE
    if target.exists():
        conn = json.loads(target.read_text(encoding="utf-8"))
        if not isinstance(conn.get("port"), int) or not conn.get("host"):
            raise MigrationError(f"{JSON_FILE} has no host or no numeric port")
