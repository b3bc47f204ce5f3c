"""The folder tree an image is built from: checked for what NTFS and Windows can hold, hashed, sized.

Checking happens in full before any tool runs, so bad input changes nothing.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from imaging.core.errors import InputError
from imaging.core.hashing import sha256_and_size
from imaging.core.quoting import check_ntfs_name
from imaging.images.manifest import FileEntry

MIB = 1024 * 1024
CLUSTER = 4096
MIN_VOLUME_BYTES = 4 * MIB

# Folders Windows itself keeps at the root of a volume it has mounted; never part of an image's content.
WINDOWS_MANAGED = ("System Volume Information", "$RECYCLE.BIN")
_WINDOWS_MANAGED_UPPER = {name.upper() for name in WINDOWS_MANAGED}


@dataclass(frozen=True)
class SourceTree:
    """A checked folder tree, ready to be imaged: what :func:`scan_tree` found."""

    files: list[tuple[str, str, int]]  # (relative posix path, path on disk, size), sorted
    directories: list[str]

    @property
    def data_bytes(self) -> int:
        """The space the files' data takes on NTFS: each file rounded up to whole 4 KiB clusters."""
        return sum(-(-size // CLUSTER) * CLUSTER for _, _, size in self.files)


def scan_tree(tree: Path) -> SourceTree:
    """Walk ``tree`` and refuse anything an NTFS volume for Windows cannot hold, before any tool runs.

    Only regular files and folders are allowed; names must be valid Windows names, and no folder may hold
    two names that differ only in case (Windows would see only one of them).
    """
    tree = Path(tree)
    if not tree.is_dir():
        raise InputError("the source tree is not a folder", file=str(tree), fix="give an existing folder")
    files: list[tuple[str, str, int]] = []
    dirs: list[str] = []

    def walk(folder: str, rel: str) -> None:
        # plain strings, not Path objects: this runs once per file before the build starts
        seen: dict[str, str] = {}
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            rel_path = f"{rel}/{entry.name}" if rel else entry.name
            check_ntfs_name(entry.name, field="file name", file=entry.path)
            folded = entry.name.casefold()
            if folded in seen:
                raise InputError(f"{entry.name!r} and {seen[folded]!r} differ only in case", file=entry.path,
                                 field="file name", fix="rename one of them; Windows treats them as one")
            seen[folded] = entry.name
            if not rel and entry.name.upper() in _WINDOWS_MANAGED_UPPER:
                raise InputError("Windows keeps this folder name for itself at the root of a volume",
                                 file=entry.path, field="file name", fix="move it into a subfolder")
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                dirs.append(rel_path)
                walk(entry.path, rel_path)
            elif stat.S_ISREG(st.st_mode):
                files.append((rel_path, entry.path, st.st_size))
            else:
                kind = "symbolic link" if stat.S_ISLNK(st.st_mode) else "special file"
                raise InputError(f"a {kind} cannot go into an image", file=entry.path, field="file type",
                                 fix="replace it with the regular file or folder it stands for")

    walk(os.fspath(tree), "")
    files.sort(key=lambda f: f[0])
    dirs.sort()
    return SourceTree(files, dirs)


def find_name(folder: Path, name: str) -> Path | None:
    """The entry of ``folder`` that Windows would open as ``name`` (names are case-insensitive there)."""
    if not Path(folder).is_dir():
        return None
    found = [e for e in Path(folder).iterdir() if e.name.casefold() == name.casefold()]
    return found[0] if len(found) == 1 else None


def hash_tree(scanned: SourceTree) -> list[FileEntry]:
    """sha256 of every file; a file whose size changed since the scan means the tree is being written to."""
    out = []
    for rel, abs_path, size in scanned.files:
        digest, now = sha256_and_size(abs_path)
        if now != size:
            raise InputError(f"file changed size while the image was being built ({size} -> {now} bytes)",
                             file=abs_path, fix="build from a tree nothing else is writing to")
        out.append(FileEntry(rel, size, digest))
    return out


def estimate_volume_size(scanned: SourceTree) -> int:
    """A generous NTFS volume size for the tree: data in whole clusters, MFT and index room, log file.

    Measured overhead of an NTFS volume made by mkntfs is a few MiB plus a $LogFile of up to 64 MiB and
    about 1 KiB of MFT per file; we allow 4 KiB per file and folder and 10 % slack on top.
    """
    data = scanned.data_bytes
    meta = (len(scanned.files) + len(scanned.directories) + 16) * CLUSTER
    need = int((data + meta) * 1.10) + 64 * MIB
    return max(MIN_VOLUME_BYTES, -(-need // MIB) * MIB)
