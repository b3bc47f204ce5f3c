"""A damaged journal or record is shown, affects only what it describes, and has one way out (issue 13,
item 7): flipped bytes in the real SQLite file, read by `invoke status`, repaired by `invoke repair-journal`."""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path

import pytest

from imaging.core.errors import ImagingError
from imaging.model import layout
from imaging.ops import reimage as reimaging
from imaging.ops import repair
from imaging.ops import status as statuses
from imaging.ops.context import Context
from imaging.state.journal import Journal
from tests.cli.test_cli import inv
from tests.ops.test_failed_undo import _ctx

NAMES = ["ALF", "GEM", "ZOOM"]


def _history(project: Path) -> Context:
    """Three instruments reimaged, ZOOM twice (2026C3.0, then 2026C3.1); the journal checkpointed to its file."""
    ctx = _ctx(project)
    for name in NAMES:
        assert reimaging.reimage(ctx, name, "2026C3.0").ok
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.1").ok
    ctx.journal.close()  # the last connection closing moves the WAL into the file
    return ctx


def _flip(path: Path, offset: int, bit: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))


def _record(ctx: Context, name: str) -> Path:
    inst = ctx.inventory.instrument(name)
    var = layout.disk_path(ctx.inventory.host_of(inst), inst, "var")
    return ctx.providers.lab.path(inst.host, var) / "content" / "imaging" / "record.json"


def test_one_flipped_bit_in_a_release_is_shown_and_repaired_from_the_instruments_record(project: Path) -> None:
    ctx = _history(project)
    journal = ctx.paths.journal
    data = journal.read_bytes()
    at = data.index(b"2026C3.02026C3.1")  # ZOOM's last reimage: from_release, to_release side by side
    _flip(journal, at + len("2026C3.02026C3."), 0)  # "2026C3.1" -> "2026C3.0"

    rows = {r.instrument: r for r in statuses.fleet_status(ctx, NAMES)}
    zoom = rows["ZOOM"]
    assert "journal's row of reimage" in zoom.pending and "checksum" in zoom.pending
    assert zoom.hint == "`invoke repair-journal`" and zoom.recorded == "2026C3.1"
    assert rows["ALF"].pending == "reimage to 2026C3.1" and rows["ALF"].hint == ""  # the others unaffected
    with pytest.raises(ImagingError, match="repair-journal"):  # nothing changes on an untrusted history
        reimaging.reimage(ctx, "ZOOM", "2026C3.0")

    out = repair.repair_journal(ctx)
    assert out.kept_as is not None and out.kept_as.read_bytes() != journal.read_bytes()
    assert [line.split(":")[1].strip() for line in out.rebuilt] == ["reimage of ZOOM to 2026C3.1"]
    rows = {r.instrument: r for r in statuses.fleet_status(ctx, NAMES)}
    assert rows["ZOOM"].running == rows["ZOOM"].recorded == "2026C3.1"
    assert "journal" not in rows["ZOOM"].pending and rows["ZOOM"].hint == ""
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.0").ok  # the instrument works again
    assert repair.repair_journal(ctx).kept_as is None  # nothing left to repair
    ctx.close()


def test_random_byte_flips_never_crash_status_and_repair_always_gets_out(project: Path) -> None:
    ctx = _history(project)
    journal = ctx.paths.journal
    good = journal.read_bytes()
    expected = {r.instrument: r.running for r in statuses.fleet_status(ctx, NAMES)}
    ctx.journal.close()
    for trial in range(30):
        rnd = random.Random(trial)
        journal.write_bytes(good)
        for suffix in ("-wal", "-shm"):
            Path(f"{journal}{suffix}").unlink(missing_ok=True)
        _flip(journal, rnd.randrange(len(good)), rnd.randrange(8))
        try:
            rows = statuses.fleet_status(ctx, NAMES)  # never a traceback for the whole fleet
        finally:
            ctx.journal.close()
        for r in rows:
            if r.running != expected[r.instrument]:
                assert r.hint == "`invoke repair-journal`", (trial, r)  # never silently another release
        try:
            repair.repair_journal(ctx)
            rows = statuses.fleet_status(ctx, NAMES)
        finally:
            ctx.journal.close()
        for r in rows:
            assert "journal" not in r.pending, (trial, r)  # the way out worked
            assert r.running is None or r.running == r.recorded, (trial, r)
    ctx.close()


def test_a_flipped_record_reads_as_damaged_not_as_another_release(project: Path) -> None:
    ctx = _history(project)
    record = _record(ctx, "ZOOM")
    record.write_bytes(record.read_bytes().replace(b'"release": "2026C3.1"', b'"release": "2026C3.0"'))
    [row] = statuses.fleet_status(ctx, ["ZOOM"])
    assert row.recorded is None and "own record is damaged" in row.pending and "checksum" in row.pending
    assert row.hint == "`invoke reimage --instrument=ZOOM --force` (the damaged record is kept beside the new one)"
    assert reimaging.reimage(ctx, "ZOOM", "2026C3.1", force=True).ok
    assert (record.parent / "record.damaged.json").read_bytes().count(b'"release": "2026C3.0"') == 1
    [row] = statuses.fleet_status(ctx, ["ZOOM"])
    assert row.hint == "" and row.recorded == row.running == "2026C3.1"
    ctx.close()


def test_a_journal_sqlite_cannot_open_is_named_by_status_and_repaired(project: Path) -> None:
    ctx = _history(project)
    journal = ctx.paths.journal
    _flip(journal, 0, 0)  # the file header: SQLite says "file is not a database"
    res = inv(project, "status")
    assert res.returncode == 0, res.stderr
    assert "repair-journal" in res.stdout and "Traceback" not in res.stderr
    res = inv(project, "reimage", "--instrument=ZOOM", "--release=2026C3.0")
    assert res.returncode != 0 and "invoke repair-journal" in res.stderr and "Traceback" not in res.stderr
    journal.write_bytes(b"SQLite format 3\0" + journal.read_bytes()[16:])  # the header fixed by hand
    res = inv(project, "repair-journal")
    assert res.returncode == 0 and "nothing to repair" in res.stdout


def test_a_journal_from_before_checksums_opens_and_its_rows_stay_readable(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    from imaging.state.journal import SCHEMA
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    db.execute("INSERT INTO operations (id, kind, instrument, vm, host, user, machine, pid, started, status, plan)"
                " VALUES ('a1', 'reimage', 'ZOOM', 'NDXZOOM', 'h', 'u', 'm', 1, 't', 'ok', '[]')")
    db.commit()
    db.close()
    j = Journal(path)
    assert j.operation("a1").damaged is None and j.damaged() == []
    j.finish("a1", "ok")  # an update seals the old row
    assert j.damaged() == []
    shutil.copy(path, tmp_path / "copy")
