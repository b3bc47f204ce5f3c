"""The records of fleet runs (deploy, hotfix, revert): one JSON file per run, rewritten as jobs end.

A record is what ``imaging.engine.runner.new_record`` makes: id, kind, selection, waves, options, status,
results. It is how a deploy is resumed, how ``@failed`` is found, and what the reports are written from.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imaging.core.errors import InputError
from imaging.core.files import read_json, write_json


def new_run_id(kind: str = "deploy") -> str:
    """A fleet run's id, also the ``batch`` of every operation it starts: ``<kind>-<UTC time>-<random>``."""
    return kind + "-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


class RunRecords:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.damaged: list[Path] = []  # records found unreadable by ``all`` (named by `invoke status`)

    def write(self, record: dict[str, Any]) -> None:
        write_json(self.folder / f"{record['id']}.json", record, sort_keys=False)

    def read(self, run_id: str) -> dict[str, Any]:
        f = self.folder / f"{run_id}.json"
        if not f.exists():
            raise InputError(f"no deploy {run_id}", file=str(f), fix="see the ids in the deploys folder")
        try:
            return read_json(f)
        except (ValueError, UnicodeDecodeError):
            raise InputError("the run record is damaged", file=str(f),
                             fix="its operations are in the journal: name the instruments instead of @failed, "
                                 "or move the file aside") from None

    def all(self, kind: str = "deploy") -> list[dict[str, Any]]:
        """The records of one kind of fleet run, oldest first."""
        d = self.folder
        recs = []
        for f in sorted(d.glob(f"{kind}-*.json")) if d.is_dir() else []:
            try:
                rec = read_json(f)
                if isinstance(rec, dict) and {"id", "started", "status"} <= rec.keys():
                    recs.append(rec)
                    continue
            except (ValueError, UnicodeDecodeError):
                pass
            self.damaged.append(f)  # a damaged record affects only its own run: the others are still found
        return sorted((r for r in recs if r.get("kind", "deploy") == kind), key=lambda r: (r["started"], r["id"]))

    def last(self, kind: str = "deploy") -> dict[str, Any] | None:
        recs = self.all(kind)
        return recs[-1] if recs else None
