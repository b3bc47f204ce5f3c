"""The journal: the append-only history of every operation and each of its steps (SQLite).

Several processes (two operators' deploys sharing one state folder) may write at once, so every write is
a short transaction in WAL mode with a busy timeout. Rows are only ever inserted or moved forward in
status; nothing is deleted.
"""

from __future__ import annotations

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

# Operation statuses. "running" with no live owner is shown as interrupted.
RUNNING, OK, FAILED, ROLLED_BACK, ROLLBACK_FAILED, ABANDONED = (
    "running", "ok", "failed", "rolled_back", "rollback_failed", "abandoned")
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


class Journal:
    """Records operations and steps; the state folder's one source of history."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._db() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """One connection per thread, kept open: opening and closing per write costs a checkpoint each time.

        Each statement is its own transaction (autocommit), so a killed process loses nothing it recorded.
        """
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("PRAGMA synchronous=NORMAL")
            db.row_factory = sqlite3.Row
            self._local.db = db
        yield db

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
        return [StepRecord(op_id=r["op_id"], idx=r["idx"], phase=r["phase"], action=r["action"],
                           summary=r["summary"], started=r["started"], ended=r["ended"], status=r["status"],
                           changed=None if r["changed"] is None else bool(r["changed"]),
                           result=json.loads(r["result"]) if r["result"] else None, error=r["error"])
                for r in rows]

    def all_text(self) -> str:
        """Everything stored, as text: used by tests that prove no secret ever reaches the journal."""
        with self._db() as db:
            rows = [tuple(r) for t in ("operations", "steps") for r in db.execute(f"SELECT * FROM {t}")]
        return json.dumps(rows, default=str)


def _op(row: sqlite3.Row) -> Operation:
    return Operation(
        id=row["id"], kind=row["kind"], instrument=row["instrument"], vm=row["vm"], host=row["host"],
        user=row["user"], machine=row["machine"], pid=row["pid"], started=row["started"], ended=row["ended"],
        status=row["status"], from_release=row["from_release"], to_release=row["to_release"],
        plan=json.loads(row["plan"]), rollback_point=json.loads(row["rollback_point"]) if row["rollback_point"]
        else None, error=row["error"], batch=row["batch"])
