"""Reproducible tar archives: the lab's image format and the hotfix package format.

Same members, same bytes, same sha256: members are sorted, folders are implied by paths, and owner, mode
and time are fixed. Member contents are bytes or a file that is streamed (never read whole).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO


def _info(name: str, *, folder: bool, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if folder:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.size, info.mode = size, 0o644
    return info


def write_tar(members: Mapping[str, bytes | Path | None], out: Path | BinaryIO) -> None:
    """Write ``members`` to ``out``: posix relative path -> bytes, the Path of a file to stream, or None
    for a folder (folders that hold members need not be listed)."""
    target = {"name": str(out)} if isinstance(out, Path) else {"fileobj": out}
    with tarfile.open(mode="w", format=tarfile.PAX_FORMAT, **target) as tar:
        folders: set[str] = set()
        for rel in sorted(members):
            parts = rel.split("/")
            for k in range(1, len(parts)):
                folder = "/".join(parts[:k])
                if folder not in folders:
                    folders.add(folder)
                    tar.addfile(_info(folder, folder=True))
            data = members[rel]
            if data is None:
                if rel not in folders:
                    folders.add(rel)
                    tar.addfile(_info(rel, folder=True))
            elif isinstance(data, Path):
                with open(data, "rb") as fh:
                    tar.addfile(_info(rel, folder=False, size=data.stat().st_size), fh)
            else:
                tar.addfile(_info(rel, folder=False, size=len(data)), io.BytesIO(data))


def tar_bytes(members: Mapping[str, bytes | Path | None]) -> bytes:
    buf = io.BytesIO()
    write_tar(members, buf)
    return buf.getvalue()
