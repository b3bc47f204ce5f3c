"""The Debian tools a disk image is built with, and sparse file copies between image files.

Every external program runs through :func:`run` (argument lists only, stderr kept for the error), and is
found through :func:`tool`, which names the Debian package to install when a program is missing.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from imaging.core.errors import ImagingError

PACKAGES = {
    "qemu-img": "qemu-utils",
    "mkntfs": "ntfs-3g",
    "ntfslabel": "ntfs-3g",
    "wimlib-imagex": "wimtools",
}
# mkntfs and ntfslabel live in sbin, which an ordinary user's PATH often lacks.
_EXTRA_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def tool(name: str) -> str:
    """The absolute path of ``name``, or an error that says which Debian package provides it."""
    if name not in PACKAGES:
        raise ImagingError(f"unknown image tool {name!r}")
    found = shutil.which(name)
    if not found:
        search = os.pathsep.join(_EXTRA_DIRS)
        found = shutil.which(name, path=search)
    if not found:
        raise ImagingError(f"the program {name!r} is not installed. Fix: apt-get install {PACKAGES[name]}")
    return found


def require_tools(names: Sequence[str] = tuple(PACKAGES)) -> dict[str, str]:
    """Check every tool up front, so a build never stops half-way for a missing program."""
    missing = []
    paths = {}
    for name in names:
        try:
            paths[name] = tool(name)
        except ImagingError:
            missing.append(name)
    if missing:
        pkgs = sorted({PACKAGES[m] for m in missing})
        raise ImagingError(f"missing program(s) {', '.join(missing)}. Fix: apt-get install {' '.join(pkgs)}")
    return paths


def _tail(text: str, limit: int = 2000) -> str:
    # wimlib draws progress with carriage returns; keep only the last state of each line.
    lines = [ln.rsplit("\r", 1)[-1].rstrip() for ln in text.splitlines()]
    out = "\n".join(ln for ln in lines if ln)
    return out[-limit:]


def run(name: str, args: Sequence[str | os.PathLike[str]], *, what: str) -> subprocess.CompletedProcess[str]:
    """Run one image tool; on failure raise an error that says what we were doing and what it said."""
    cmd = [tool(name), *(os.fspath(a) for a in args)]
    env = dict(os.environ, LC_ALL="C.UTF-8")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", env=env, check=False)
    except OSError as exc:
        raise ImagingError(f"{what}: could not start {name}: {exc}") from exc
    if proc.returncode != 0:
        said = _tail(proc.stderr) or _tail(proc.stdout) or "(no output)"
        raise ImagingError(f"{what}: {name} failed with exit code {proc.returncode}:\n{said}")
    return proc


@cache
def versions() -> dict[str, str]:
    """One version line per tool, recorded in every manifest so a build can be reproduced."""
    out = {}
    for name, flag in (("qemu-img", "--version"), ("mkntfs", "--version"), ("wimlib-imagex", "--version")):
        proc = subprocess.run([tool(name), flag], capture_output=True, text=True, errors="replace",
                              check=False)
        text = (proc.stdout + "\n" + proc.stderr).strip()
        first = next((ln.strip() for ln in text.splitlines() if re.search(r"\d+\.\d+", ln)), text[:80])
        out[name] = first
    return out


def copy_sparse(src: Path, dst_fd: int, *, src_offset: int = 0, length: int | None = None,
                dst_offset: int = 0) -> int:
    """Copy the data extents of ``src[src_offset:src_offset+length]`` to ``dst_fd`` at ``dst_offset``.

    Holes are skipped (SEEK_DATA/SEEK_HOLE), so a 50 GiB volume with 100 MiB of data costs 100 MiB of
    I/O and the destination stays sparse. Returns the number of bytes copied.
    """
    copied = 0
    with open(src, "rb") as fh:
        fd = fh.fileno()
        end = os.fstat(fd).st_size if length is None else src_offset + length
        pos = src_offset
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            if data >= end:
                break
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), end)
            _copy_range(fd, dst_fd, data, dst_offset + (data - src_offset), hole - data)
            copied += hole - data
            pos = hole
    return copied


def _copy_range(src_fd: int, dst_fd: int, src_pos: int, dst_pos: int, count: int) -> None:
    try:
        while count > 0:
            n = os.copy_file_range(src_fd, dst_fd, count, src_pos, dst_pos)
            if n == 0:
                raise ImagingError("source image ended early while copying")
            src_pos, dst_pos, count = src_pos + n, dst_pos + n, count - n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        while count > 0:
            chunk = os.pread(src_fd, min(count, 8 * 1024 * 1024), src_pos)
            if not chunk:
                raise ImagingError("source image ended early while copying") from exc
            os.pwrite(dst_fd, chunk, dst_pos)
            src_pos, dst_pos, count = src_pos + len(chunk), dst_pos + len(chunk), count - len(chunk)


def allocated_bytes(path: Path) -> int:
    """Bytes a file really occupies on disk (its sparse size)."""
    return os.stat(path).st_blocks * 512


_FALLOC_FL_COLLAPSE_RANGE = 0x08
_FALLOC_FL_INSERT_RANGE = 0x20


def _fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    """Linux fallocate(2) with a mode flag; False when the file system or platform cannot do it."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.fallocate
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int
    if fn(fd, mode, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err))


def shift_into_place(path: Path, head: int, tail: int) -> None:
    """Turn a volume file into a disk file: ``head`` bytes of hole before it and ``tail`` bytes after.

    Uses FALLOC_FL_INSERT_RANGE (ext4, XFS) so nothing is copied; elsewhere copies the data extents.
    """
    size = os.stat(path).st_size
    with open(path, "r+b") as fh:
        if _fallocate(fh.fileno(), _FALLOC_FL_INSERT_RANGE, 0, head):
            fh.truncate(head + size + tail)
            return
    moved = path.with_name(path.name + ".disk")
    fd = os.open(moved, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, head + size + tail)
        copy_sparse(path, fd, dst_offset=head)
    finally:
        os.close(fd)
    os.replace(moved, path)


def cut_out(path: Path, offset: int, length: int) -> None:
    """Keep only ``path[offset:offset+length]`` (a partition out of a disk), in place when possible."""
    with open(path, "r+b") as fh:
        if offset == 0 or _fallocate(fh.fileno(), _FALLOC_FL_COLLAPSE_RANGE, 0, offset):
            fh.truncate(length)
            return
    part = path.with_name(path.name + ".part")
    fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, length)
        copy_sparse(path, fd, src_offset=offset, length=length)
    finally:
        os.close(fd)
    os.replace(part, path)
