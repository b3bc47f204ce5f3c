"""Writing state files so that a reader never sees half of one: write beside, then rename into place.

The lab's disks, deploy records, build records and the bad-release list all go through here. A process
killed between the two leaves its temporary behind (``.tmp-<pid>-...``); the next write into that folder
removes the temporaries of processes that no longer exist, so no half-written file outlives the next run.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".tmp-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_dead_temporaries(folder: Path) -> list[str]:
    """Remove the temporaries that killed writers left in ``folder``; a live writer's are kept."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(TEMP_PREFIX):
            continue
        pid = name[len(TEMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                os.unlink(os.path.join(folder, name))
                removed.append(name)
            except OSError:
                pass
    return removed


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file by rename: a hard link to a parent disk's file is replaced, never written through."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{os.getpid()}-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_json(path: Path, doc: Any, *, sort_keys: bool = True) -> None:
    """Write ``doc`` as indented JSON, atomically."""
    atomic_write(path, (json.dumps(doc, indent=2, sort_keys=sort_keys) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))
