"""Writing state files so that a reader never sees half of one: write beside, then rename into place.

The lab's disks, deploy records, build records and the bad-release list all go through here.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_write(path: Path, data: bytes) -> None:
    """Write a file by rename: a hard link to a parent disk's file is replaced, never written through."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
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
