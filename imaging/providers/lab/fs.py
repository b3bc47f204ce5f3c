"""The lab's file-system model: where Windows paths of hosts, shares and guests live in the lab folder.

This is the one place Windows paths are mapped onto the lab folder:
  host path  D:\\Imaging\\images\\x.vhdx   -> <lab>/hosts/<HOST>/D/Imaging/images/x.vhdx
  share path \\\\server\\images\\x.tar      -> <lab>/shares/<server>/images/x.tar
  guest path C:\\Instrument\\Apps           -> <content of the VM's OS disk>/Instrument/Apps
A lab "disk" is a folder holding disk.json (role, label, parent, read-only flag, size, attachment) and
content/ (the volume's file tree). Writes replace files atomically, so a hard-linked clone never writes
through to its parent.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PureWindowsPath

from imaging.core.errors import ProviderError
from imaging.core.quoting import check_name, check_windows_path


def _segments(winpath: str, field: str) -> tuple[str, list[str]]:
    check_windows_path(winpath, field=field)
    p = PureWindowsPath(winpath)
    return p.drive, list(p.parts[1:])


def host_path(lab: Path, host: str, winpath: str) -> Path:
    """Map an absolute Windows path on ``host`` (a drive path) or a UNC share path into the lab folder."""
    check_name(host, field="host")
    drive, parts = _segments(winpath, "path")
    if drive.startswith("\\\\"):
        server, share = drive.strip("\\").split("\\", 1)
        return lab.joinpath("shares", server, share, *parts)
    return lab.joinpath("hosts", host, drive.rstrip(":").upper(), *parts)


def guest_rel(winpath: str) -> list[str]:
    """The segments of a guest path on C:, relative to the OS disk's root."""
    drive, parts = _segments(winpath, "guest path")
    if drive.upper() != "C:":
        raise ProviderError(f"guest path {winpath!r} is not on C: (the lab guest has one system drive)")
    return parts


def clone_tree(src: Path, dst: Path) -> int:
    """Hard-link every file of ``src`` into ``dst`` (a copy-on-write clone when writes go by rename).

    Returns the number of files linked. Symbolic links are recreated as links.
    """
    count = 0
    src_s = str(src)
    for dirpath, dirnames, filenames in os.walk(src_s):
        rel = os.path.relpath(dirpath, src_s)
        target_dir = dst if rel == "." else dst / rel
        target_dir.mkdir(parents=True, exist_ok=True)
        for d in list(dirnames):
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                os.symlink(os.readlink(full), target_dir / d)
                dirnames.remove(d)
        for f in filenames:
            full = os.path.join(dirpath, f)
            if os.path.islink(full):
                os.symlink(os.readlink(full), target_dir / f)
            else:
                os.link(full, target_dir / f)
                count += 1
    return count


def copy_tree(src: Path, dst: Path) -> None:
    """A real copy (backups must not share inodes with the live volume)."""
    shutil.copytree(src, dst, symlinks=True, copy_function=shutil.copy2)
