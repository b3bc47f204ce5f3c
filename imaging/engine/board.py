"""The live board: while a fleet run goes, its HTML report is rewritten every few seconds (atomically), so
anyone can open it from a share and reload; at the end it becomes the run's report. A page that cannot be
drawn never stops the run: the next attempt draws it again, and the last error is kept."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from imaging.engine.html_report import render_run, write_page
from imaging.engine.reports import subject
from imaging.engine.timeline import Timeline, measured
from imaging.state.journal import Journal

BOARD_INTERVAL_S = 3.0


def timeline_of(record: Mapping[str, Any], journal: Journal | None, hosts: Mapping[str, str]) -> Timeline:
    return measured({**record, "subject": subject(dict(record))}, journal, hosts)


class LiveBoard:
    """Rewrite ``path`` from ``snapshot()`` (a copy of the run's record) every ``interval`` seconds."""

    def __init__(self, path: Path, snapshot: Callable[[], dict[str, Any]], journal: Journal | None,
                 hosts: Mapping[str, str], interval: float | None = None) -> None:
        self.path, self.snapshot, self.journal, self.hosts = path, snapshot, journal, dict(hosts)
        self.interval = BOARD_INTERVAL_S if interval is None else interval
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="live-board", daemon=True)

    def draw(self, *, live: bool) -> Timeline | None:
        try:
            t = timeline_of(self.snapshot(), self.journal, self.hosts)
            write_page(self.path, render_run(t, live=live))
            return t
        except Exception as exc:  # noqa: BLE001 - the board must never stop the run it shows
            self.error = f"{type(exc).__name__}: {exc}"
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.draw(live=True)

    def __enter__(self) -> LiveBoard:
        self.draw(live=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def snapshot_of(record: dict[str, Any], lock: threading.Lock) -> Callable[[], dict[str, Any]]:
    """A copy of a record other threads change under ``lock``."""
    def take() -> dict[str, Any]:
        with lock:
            return json.loads(json.dumps(record, default=str))
    return take
