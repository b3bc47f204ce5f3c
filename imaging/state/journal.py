"""The journal: the append-only history of every operation and each of its steps (SQLite).

Several processes (two operators' deploys sharing one state folder) may write at once, so every write is
a short transaction in WAL mode with a busy timeout. Rows are only ever inserted or moved forward in
status; nothing is deleted.

Every row carries a checksum (``sum``, kept by triggers so that no write can forget it). A row whose bytes
changed under the tool reads as damaged: it affects only the instrument it describes, and status names it
with `invoke repair-journal`. A file SQLite cannot read at all raises ``JournalDamaged`` with the same fix.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaging.core.errors import ImagingError, os_error
from imaging.core.hashing import value_sum
from imaging.core.stamps import now, who

SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    instrument TEXT NOT NULL,
    vm TEXT NOT NULL,
    host TEXT NOT NULL,
    user TEXT NOT NULL,
    machine TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started TEXT NOT NULL,
    ended TEXT,
    status TEXT NOT NULL,
    from_release TEXT,
    to_release TEXT,
    plan TEXT NOT NULL,
    rollback_point TEXT,
    error TEXT,
    batch TEXT
);
CREATE INDEX IF NOT EXISTS operations_instrument ON operations (instrument, started);
CREATE TABLE IF NOT EXISTS steps (
    op_id TEXT NOT NULL REFERENCES operations (id),
    idx INTEGER NOT NULL,
    phase TEXT NOT NULL,
    action TEXT NOT NULL,
    summary TEXT NOT NULL,
    started TEXT NOT NULL,
    ended TEXT,
    status TEXT NOT NULL,
    changed INTEGER,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS steps_op ON steps (op_id, idx);
"""

OP_COLUMNS = ("id", "kind", "instrument", "vm", "host", "user", "machine", "pid", "started", "ended", "status",
              "from_release", "to_release", "plan", "rollback_point", "error", "batch")
STEP_COLUMNS = ("op_id", "idx", "phase", "action", "summary", "started", "ended", "status", "changed", "result",
                "error")
SUM_FUNCTION = "imaging_row_sum"


def _triggers(table: str, columns: tuple[str, ...]) -> str:
    """Triggers that keep ``sum`` right on every insert and update: the checksum is written in the same
    statement as the row, so a killed process never leaves a row with a stale one."""
    args = ", ".join(f"NEW.{c}" for c in columns)
    body = f"UPDATE {table} SET sum = {SUM_FUNCTION}({args}) WHERE rowid = NEW.rowid;"
    return (f"CREATE TRIGGER IF NOT EXISTS {table}_sum_insert AFTER INSERT ON {table} BEGIN {body} END;\n"
            f"CREATE TRIGGER IF NOT EXISTS {table}_sum_update AFTER UPDATE OF {', '.join(columns)} ON {table}"
            f" BEGIN {body} END;\n")


def row_sum(*values: object) -> str:
    return value_sum(list(values))


def _storable(value: object) -> object:
    """A salvaged value as SQLite can store it: bytes that were not UTF-8 become U+FFFD."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return value


def _text(raw: bytes) -> str:
    """Text as stored, even when a flipped byte made it invalid UTF-8 (the checksum then tells)."""
    return raw.decode("utf-8", "surrogateescape")


class JournalDamaged(ImagingError):
    """SQLite cannot read the journal file at all (its pages, not a row, are damaged)."""

    def __init__(self, path: Path, detail: str) -> None:
        self.path, self.detail = path, detail
        super().__init__(f"the journal {path} is damaged ({detail}); run `invoke repair-journal`: it keeps the "
                         f"damaged file beside it and rebuilds the journal from every row it can still read and "
                         f"from the instruments' own records")

# Operation statuses. "running" with no live owner is shown as interrupted.
RUNNING, OK, FAILED, ROLLED_BACK, ROLLBACK_FAILED, ABANDONED = (
    "running", "ok", "failed", "rolled_back", "rollback_failed", "abandoned")
# The batch of a hotfix re-applied right after a reimage: this prefix and that reimage's id.
CARRY_BATCH = "carry-"
INTERRUPTED = "interrupted"  # a step whose process stopped while it ran (closed when the operation is taken over)


@dataclass(frozen=True)
class Operation:
    id: str
    kind: str
    instrument: str
    vm: str
    host: str
    user: str
    machine: str
    pid: int
    started: str
    ended: str | None
    status: str
    from_release: str | None
    to_release: str | None
    plan: list[dict[str, Any]]
    rollback_point: dict[str, Any] | None
    error: str | None
    batch: str | None
    damaged: str | None = None  # why the row cannot be trusted (checksum or JSON); None when it is intact


@dataclass(frozen=True)
class StepRecord:
    op_id: str
    idx: int
    phase: str  # "do" or "undo"
    action: str
    summary: str
    started: str
    ended: str | None
    status: str
    changed: bool | None
    result: dict[str, Any] | None
    error: str | None
    damaged: str | None = None


class Journal:
    """Records operations and steps; the state folder's one source of history."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)
            for table, columns in (("operations", OP_COLUMNS), ("steps", STEP_COLUMNS)):
                have = {r["name"] for r in db.execute(f"PRAGMA table_info({table})")}
                if "sum" not in have:  # a journal from before checksums: its old rows stay unchecked
                    db.execute(f"ALTER TABLE {table} ADD COLUMN sum TEXT")
                db.executescript(_triggers(table, columns))

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """One connection per thread, kept open: opening and closing per write costs a checkpoint each time.

        Each statement is its own transaction (autocommit), so a killed process loses nothing it recorded.
        """
        db = getattr(self._local, "db", None)
        try:
            if db is None:
                db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
                db.execute("PRAGMA busy_timeout=30000")
                db.execute("PRAGMA synchronous=NORMAL")
                db.row_factory = sqlite3.Row
                db.text_factory = _text
                db.create_function(SUM_FUNCTION, -1, row_sum, deterministic=True)
                self._local.db = db
            yield db
        except sqlite3.DatabaseError as exc:
            if type(exc) is sqlite3.DatabaseError or "malformed" in str(exc):  # not "locked", "no such table"
                raise JournalDamaged(self.path, str(exc)) from exc
            for words, code in (("disk is full", errno.ENOSPC), ("readonly", errno.EROFS),
                                ("unable to open", errno.EACCES)):
                if words in str(exc):  # the journal's own disk: said as every other disk problem is
                    raise os_error(OSError(code, os.strerror(code), str(self.path))) from exc
            raise

    # --- operations ---
    def begin(self, *, kind: str, instrument: str, vm: str, host: str, plan: list[dict[str, Any]],
              from_release: str | None, to_release: str | None, batch: str | None = None,
              op_id: str | None = None) -> str:
        op_id = op_id or uuid.uuid4().hex[:12]
        with self._db() as db:
            db.execute(
                "INSERT INTO operations (id, kind, instrument, vm, host, user, machine, pid, started, status,"
                " from_release, to_release, plan, batch) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (op_id, kind, instrument, vm, host, who(), socket.gethostname(), os.getpid(), now(), RUNNING,
                 from_release, to_release, json.dumps(plan), batch))
        return op_id

    def claim(self, op_id: str) -> None:
        """A resuming (or rolling-back) process takes over an interrupted operation; the step that was running
        when its process stopped is closed as interrupted, so no row stays "running" for ever."""
        with self._db() as db:
            db.execute("UPDATE operations SET pid=?, machine=?, status=? WHERE id=?",
                       (os.getpid(), socket.gethostname(), RUNNING, op_id))
            db.execute("UPDATE steps SET status=?, ended=?, error=? WHERE op_id=? AND status=?",
                       (INTERRUPTED, now(), "the process stopped during this step", op_id, RUNNING))

    def set_rollback_point(self, op_id: str, point: dict[str, Any]) -> None:
        with self._db() as db:
            db.execute("UPDATE operations SET rollback_point=? WHERE id=?", (json.dumps(point), op_id))

    def finish(self, op_id: str, status: str, error: str | None = None) -> None:
        with self._db() as db:
            db.execute("UPDATE operations SET status=?, ended=?, error=? WHERE id=?", (status, now(), error, op_id))

    def operation(self, op_id: str) -> Operation:
        with self._db() as db:
            row = db.execute("SELECT * FROM operations WHERE id=?", (op_id,)).fetchone()
        if row is None:
            raise KeyError(op_id)
        return _op(row)

    def operations(self, *, instrument: str | None = None, kind: str | None = None,
                   batch: str | None = None) -> list[Operation]:
        q, args = "SELECT * FROM operations WHERE 1=1", []
        if instrument:
            q += " AND instrument=?"
            args.append(instrument)
        if kind:
            q += " AND kind=?"
            args.append(kind)
        if batch:
            q += " AND batch=?"
            args.append(batch)
        with self._db() as db:
            return [_op(r) for r in db.execute(q + " ORDER BY started, rowid", args)]

    def last(self, instrument: str, *, kinds: tuple[str, ...] | None = None,
             statuses: tuple[str, ...] | None = None) -> Operation | None:
        ops = [o for o in self.operations(instrument=instrument)
               if (kinds is None or o.kind in kinds) and (statuses is None or o.status in statuses)]
        return ops[-1] if ops else None

    # --- steps ---
    def step_start(self, op_id: str, idx: int, phase: str, action: str, summary: str) -> None:
        with self._db() as db:
            db.execute("INSERT INTO steps (op_id, idx, phase, action, summary, started, status)"
                       " VALUES (?,?,?,?,?,?,?)", (op_id, idx, phase, action, summary, now(), RUNNING))

    def step_end(self, op_id: str, idx: int, phase: str, *, ok: bool, changed: bool | None = None,
                 result: dict[str, Any] | None = None, error: str | None = None) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE steps SET ended=?, status=?, changed=?, result=?, error=? WHERE rowid = ("
                " SELECT rowid FROM steps WHERE op_id=? AND idx=? AND phase=? ORDER BY rowid DESC LIMIT 1)",
                (now(), OK if ok else FAILED, None if changed is None else int(changed),
                 json.dumps(result) if result is not None else None, error, op_id, idx, phase))

    def steps(self, op_id: str) -> list[StepRecord]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM steps WHERE op_id=? ORDER BY rowid", (op_id,)).fetchall()
        return [_step(r) for r in rows]

    def damaged(self, instrument: str | None = None) -> list[Operation]:
        """Every operation (of ``instrument``, or all) whose row, or one of whose step rows, cannot be
        trusted. A row whose instrument field itself was damaged is only found by asking for all."""
        ops = self.operations(instrument=instrument)
        with self._db() as db:
            q = "SELECT * FROM steps"
            if instrument:
                q += " WHERE op_id IN (SELECT id FROM operations WHERE instrument=?)"
            bad_steps = {r["op_id"]: s.damaged for r in db.execute(q, (instrument,) if instrument else ())
                         if (s := _step(r)).damaged}
        out = []
        for op in ops:
            if op.damaged:
                out.append(op)
            elif op.id in bad_steps:
                out.append(Operation(**{**op.__dict__, "damaged": f"a step row: {bad_steps[op.id]}"}))
        return out

    # --- repair ---
    def salvage(self) -> Salvage:
        """Every row that can still be read, each with why it cannot be trusted (if so). Tolerates a file
        whose pages are damaged: rows are then read one rowid at a time and the unreadable ones counted."""
        self.close()
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.row_factory, db.text_factory = sqlite3.Row, _text
        out = Salvage(operations=[], steps=[], unreadable=0)
        try:
            for table, columns, rows in (("operations", OP_COLUMNS, out.operations), ("steps", STEP_COLUMNS,
                                                                                       out.steps)):
                try:
                    found = list(db.execute(f"SELECT rowid AS r, * FROM {table} ORDER BY rowid"))
                except sqlite3.DatabaseError:
                    found, out.unreadable = _one_by_one(db, table, out.unreadable)
                for r in found:
                    values = {c: r[c] for c in columns}
                    problem = _check(r, columns)
                    if table == "operations" and not problem:
                        problem = _op(r).damaged
                    elif not problem:
                        problem = _step(r).damaged
                    rows.append((values, problem))
        finally:
            db.close()
        return out

    def rebuild(self, operations: list[dict[str, Any]], steps: list[dict[str, Any]], keep_as: Path) -> None:
        """Replace the journal with these rows (checksums computed afresh), keeping the old file as
        ``keep_as``. Written under a temporary name and renamed, so a crash leaves one whole journal."""
        self.close()
        new = self.path.with_name(self.path.name + ".rebuilding")
        new.unlink(missing_ok=True)
        fresh = Journal(new)
        with fresh._db() as db:
            db.execute("BEGIN")
            for table, columns, rows in (("operations", OP_COLUMNS, operations), ("steps", STEP_COLUMNS, steps)):
                marks = ",".join("?" * len(columns))
                db.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})",
                               [tuple(_storable(r[c]) for c in columns) for r in rows])
            db.execute("COMMIT")
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        fresh.close()
        for suffix in ("", "-wal", "-shm"):
            old = Path(str(self.path) + suffix)
            if old.exists():
                os.replace(old, Path(str(keep_as) + suffix))
        Path(str(new) + "-wal").unlink(missing_ok=True)
        Path(str(new) + "-shm").unlink(missing_ok=True)
        os.replace(new, self.path)

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def all_text(self) -> str:
        """Everything stored, as text: used by tests that prove no secret ever reaches the journal."""
        with self._db() as db:
            rows = [tuple(r) for t in ("operations", "steps") for r in db.execute(f"SELECT * FROM {t}")]
        return json.dumps(rows, default=str)


@dataclass
class Salvage:
    """What a damaged journal still holds: each row's columns and why it cannot be trusted (None: intact)."""

    operations: list[tuple[dict[str, Any], str | None]]
    steps: list[tuple[dict[str, Any], str | None]]
    unreadable: int  # rows SQLite could not return at all


def _one_by_one(db: sqlite3.Connection, table: str, unreadable: int) -> tuple[list[sqlite3.Row], int]:
    try:
        top = db.execute(f"SELECT max(rowid) FROM {table}").fetchone()[0] or 0
    except sqlite3.DatabaseError:
        top = 100_000
    found = []
    for rowid in range(1, top + 1):
        try:
            row = db.execute(f"SELECT rowid AS r, * FROM {table} WHERE rowid=?", (rowid,)).fetchone()
        except sqlite3.DatabaseError:
            unreadable += 1
            continue
        if row is not None:
            found.append(row)
    return found, unreadable


def _check(row: sqlite3.Row, columns: tuple[str, ...]) -> str | None:
    stored = row["sum"]
    if stored is not None and stored != row_sum(*(row[c] for c in columns)):
        return "its checksum does not match its content"
    return None


def _json(text: str | None, problems: list[str], name: str, empty: Any) -> Any:
    if not text:
        return empty
    try:
        return json.loads(text)
    except ValueError:
        problems.append(f"its {name} is not JSON")
        return empty


def _op(row: sqlite3.Row) -> Operation:
    problems = [p for p in [_check(row, OP_COLUMNS)] if p]
    plan = _json(row["plan"], problems, "plan", [])
    point = _json(row["rollback_point"], problems, "rollback point", None)
    return Operation(
        id=row["id"], kind=row["kind"], instrument=row["instrument"], vm=row["vm"], host=row["host"],
        user=row["user"], machine=row["machine"], pid=row["pid"], started=row["started"], ended=row["ended"],
        status=row["status"], from_release=row["from_release"], to_release=row["to_release"],
        plan=plan if isinstance(plan, list) else [], rollback_point=point if isinstance(point, dict) else None,
        error=row["error"], batch=row["batch"], damaged="; ".join(problems) or None)


def _step(row: sqlite3.Row) -> StepRecord:
    problems = [p for p in [_check(row, STEP_COLUMNS)] if p]
    result = _json(row["result"], problems, "result", None)
    return StepRecord(op_id=row["op_id"], idx=row["idx"], phase=row["phase"], action=row["action"],
                      summary=row["summary"], started=row["started"], ended=row["ended"], status=row["status"],
                      changed=None if row["changed"] is None else bool(row["changed"]),
                      result=result if isinstance(result, dict) else None, error=row["error"],
                      damaged="; ".join(problems) or None)
