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

    def write(self, record: dict[str, Any]) -> None:
        write_json(self.folder / f"{record['id']}.json", record, sort_keys=False)

    def read(self, run_id: str) -> dict[str, Any]:
        f = self.folder / f"{run_id}.json"
        if not f.exists():
            raise InputError(f"no deploy {run_id}", file=str(f), fix="see the ids in the deploys folder")
        return read_json(f)

    def all(self, kind: str = "deploy") -> list[dict[str, Any]]:
        """The records of one kind of fleet run, oldest first."""
        d = self.folder
        recs = [read_json(f) for f in d.glob(f"{kind}-*.json")] if d.is_dir() else []
        return sorted((r for r in recs if r.get("kind", "deploy") == kind), key=lambda r: (r["started"], r["id"]))

    def last(self, kind: str = "deploy") -> dict[str, Any] | None:
        recs = self.all(kind)
        return recs[-1] if recs else None
