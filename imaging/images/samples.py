"""Sample images for the lab: an OS template tree and an Apps tree per release, made on first use.

They let a fresh clone reimage at once. The trees are generated deterministically (same release, same
bytes) and built into VHDX images by the project's own builder (``images.build``), so a sample image is
stored, published, staged and read back exactly like an image a facility builds.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

SAMPLE_TIME = 1_767_225_600  # 2026-01-01T00:00:00Z

OS_DIRS = ("Windows/System32", "Windows/System32/drivers", "Windows/SysWOW64", "Windows/Fonts",
           "Program Files/Common Files", "Program Files (x86)/Common Files", "ProgramData/Microsoft",
           "Users/Public/Documents", "Users/Default/AppData/Local")
APPS_DIRS = ("server/bin", "server/lib", "server/db", "client/bin", "client/plugins", "python/Lib/site-packages",
             "python/Scripts")


def _blob(seed: str, size: int) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def os_tree_files(name: str, files: int = 400) -> dict[str, bytes]:
    """A Windows-like system drive: system files, empty user folders and the placeholder link targets."""
    tree: dict[str, bytes] = {
        "Windows/System32/imaging-template.txt": f"OS template {name}\n".encode(),
        "Users/operator/Desktop/.keep": b"",
        "Users/operator/Documents/.keep": b"",
        "Instrument/README.txt": b"Apps, Settings and Var are linked here from their volumes.\n",
    }
    for i in range(files - len(tree)):
        d = OS_DIRS[i % len(OS_DIRS)]
        tree[f"{d}/file{i:05d}.dll"] = _blob(f"{name}/{i}", 64 + (i * 37) % 2048)
    return tree


def apps_tree_files(name: str, version: str, files: int = 300) -> dict[str, bytes]:
    """An instrument software release: server, client, a Python distribution and the version file."""
    tree: dict[str, bytes] = {"version.txt": f"{version}\n".encode(),
                              "MySQL/bin/mysql.exe": _blob(f"{name}/mysql", 4096)}
    for i in range(files - len(tree)):
        d = APPS_DIRS[i % len(APPS_DIRS)]
        tree[f"{d}/module{i:05d}.bin"] = _blob(f"{name}/{version}/{i}", 32 + (i * 53) % 4096)
    return tree


def write_tree(files: dict[str, bytes], root: Path) -> Path:
    """Write a sample tree (fixed file times, so that the same tree captures the same way)."""
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        os.utime(p, (SAMPLE_TIME, SAMPLE_TIME))
    return root
