"""Sample images for the lab: an OS template tree and an Apps tree per release, made on first use.

They let a fresh clone reimage at once. The trees are generated deterministically (same release, same
bytes, same sha256) and stored as tar archives in the artifact store, like any other lab image.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from imaging.core import tarball

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


def write_tar(files: dict[str, bytes], out: Path) -> Path:
    """A reproducible tar of the tree (see imaging.core.tarball)."""
    tarball.write_tar(files, out)
    return out


def write_tree(files: dict[str, bytes], root: Path) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def ensure_sample(store, *, name: str, kind: str, files: dict[str, bytes]):  # noqa: ANN001 - ArtifactStore
    """Add a generated image to the store unless an artifact of that name is already there."""
    if store.exists(name):
        return store.get(name)
    with tempfile.TemporaryDirectory(prefix="imaging-sample-") as tmp:
        tar = write_tar(files, Path(tmp) / f"{name}.tar")
        return store.add(tar, name=name, kind=kind, source="generated lab sample", suffix=".tar")


def sample_identity(files: dict[str, bytes]) -> tuple[str, int]:
    """The sha256 and size the sample would have in the store, without storing it (for dry runs)."""
    from imaging.core.hashing import sha256_file

    with tempfile.TemporaryDirectory(prefix="imaging-sample-") as tmp:
        tar = write_tar(files, Path(tmp) / "sample.tar")
        return sha256_file(tar), tar.stat().st_size
