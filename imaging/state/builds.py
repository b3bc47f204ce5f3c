"""Build records: one JSON file per build under ``<state>/builds/<kind>/<name>.json``.

A record is written as ``started`` before any tool runs and moved to ``ok`` or ``failed`` at the end, so
a build that crashed stays visible as unfinished. Retention counts only ``ok`` builds; the record (with
the image manifest) outlives the image, so a pruned release can be rebuilt and checked against it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imaging.core.errors import InputError
from imaging.core.files import write_json
from imaging.core.quoting import check_name
from imaging.core.stamps import now, who

STARTED, OK, FAILED = "started", "ok", "failed"
KINDS = ("apps", "os-template", "settings", "var", "data")


@dataclass
class BuildRecord:
    """What one build was asked to do, with what, by whom, and how it ended."""

    kind: str
    name: str
    status: str
    release: str | None
    inputs: dict[str, Any]
    who: str
    started: str
    ended: str | None = None
    error: str | None = None
    sha256: str | None = None
    size: int | None = None
    tools: dict[str, str] = field(default_factory=dict)
    manifest: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class BuildRecords:
    """The build records under one state folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, kind: str, name: str) -> Path:
        if kind not in KINDS:
            raise InputError("unknown build kind", field="kind", value=kind, fix=f"use one of {', '.join(KINDS)}")
        return self.root / kind / f"{check_name(name, field='name')}.json"

    def _write(self, rec: BuildRecord) -> BuildRecord:
        write_json(self.path(rec.kind, rec.name), rec.to_dict())
        return rec

    def start(self, *, kind: str, name: str, release: str | None, inputs: dict[str, Any]) -> BuildRecord:
        return self._write(BuildRecord(kind=kind, name=name, status=STARTED, release=release, inputs=inputs,
                                       who=who(), started=now()))

    def finish(self, rec: BuildRecord, *, sha256: str, size: int, tools: dict[str, str],
               manifest: dict[str, Any] | None) -> BuildRecord:
        rec.status, rec.ended, rec.sha256, rec.size = OK, now(), sha256, size
        rec.tools, rec.manifest, rec.error = dict(tools), manifest, None
        return self._write(rec)

    def fail(self, rec: BuildRecord, error: str) -> BuildRecord:
        rec.status, rec.ended, rec.error = FAILED, now(), error
        return self._write(rec)

    def get(self, kind: str, name: str) -> BuildRecord | None:
        path = self.path(kind, name)
        if not path.exists():
            return None
        try:
            return BuildRecord(**json.loads(path.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError) as exc:
            raise InputError(f"build record is damaged: {exc}", file=str(path),
                             fix="rebuild the image, or restore the file from a backup") from None

    def all(self) -> list[BuildRecord]:
        out = []
        if not self.root.is_dir():
            return out
        for kind_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name in KINDS):
            for f in sorted(kind_dir.glob("*.json")):
                rec = self.get(kind_dir.name, f.stem)
                if rec is not None:
                    out.append(rec)
        return out
