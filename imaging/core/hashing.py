"""Hashes of files and trees: the one implementation every module uses to prove content is unchanged."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

CHUNK = 4 * 1024 * 1024


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path | str) -> str:
    """Stream a file through sha256 in fixed chunks (constant memory)."""
    return sha256_and_size(path)[0]


def sha256_and_size(path: Path | str) -> tuple[str, int]:
    """The file's sha256 and its size as seen on the open file once hashed (a size that differs from an
    earlier look means somebody is writing to it)."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
        return h.hexdigest(), os.fstat(fh.fileno()).st_size


def tree_manifest(root: Path, *, exclude: tuple[str, ...] = ()) -> dict[str, str]:
    """Map every regular file under ``root`` (posix relative path) to its sha256; links are not followed.

    ``exclude`` holds relative folder paths (posix) whose contents are left out.
    """
    root = Path(root)
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        keep = []
        for d in sorted(dirnames):
            rel = f"{rel_dir}/{d}" if rel_dir else d
            full = os.path.join(dirpath, d)
            if rel in exclude:
                continue
            if os.path.islink(full):
                out[rel] = "link:" + os.readlink(full)
                continue
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            rel = f"{rel_dir}/{f}" if rel_dir else f
            full = os.path.join(dirpath, f)
            if os.path.islink(full):
                out[rel] = "link:" + os.readlink(full)
            else:
                out[rel] = sha256_file(Path(full))
    return dict(sorted(out.items()))


def manifest_digest(manifest: dict[str, str]) -> str:
    """One digest over a tree manifest, independent of dict order."""
    h = hashlib.sha256()
    for rel, digest in sorted(manifest.items()):
        h.update(rel.encode("utf-8") + b"\0" + digest.encode("ascii") + b"\n")
    return h.hexdigest()


def value_sum(value: object) -> str:
    """The checksum of a JSON value (records, journal rows): sha256 of its canonical form, so that a flipped
    byte is told apart from a change anybody made on purpose."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
