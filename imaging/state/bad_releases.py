"""Releases marked bad for one instrument: a rollback away from a release marks it, and the release is then
never chosen for that instrument by default again (an explicit ``--release`` still may)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imaging.core.files import read_json, write_json
from imaging.core.stamps import stamp, who


class BadReleases:
    """One JSON file: instrument -> release -> when, operation, who, reason."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def _doc(self) -> dict[str, dict[str, dict[str, Any]]]:
        return read_json(self.path) if self.path.exists() else {}

    def of(self, instrument: str) -> dict[str, dict[str, Any]]:
        """The releases marked bad for ``instrument``, with why."""
        return self._doc().get(instrument, {})

    def mark(self, instrument: str, release: str, *, op_id: str, reason: str) -> None:
        doc = self._doc()
        doc.setdefault(instrument, {})[release] = {"when": stamp(), "operation": op_id, "who": who(),
                                                   "reason": reason}
        write_json(self.path, doc)
