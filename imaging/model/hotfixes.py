"""Hotfix packages: the manifest model and its validation, before anything touches an instrument.

A package is a folder (or a tar archive of one) holding ``hotfix.yaml`` and the new files under ``files/``,
each at its path relative to the Apps volume. Validation refuses absolute paths, ``..``, links that lead
out of the package, files whose sha256 does not match the manifest and releases nobody defined, naming the
file, the field and the fix. Nothing here changes anything outside a caller's scratch folder.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from imaging.core.errors import InputError
from imaging.core.hashing import sha256_bytes, sha256_file
from imaging.core.quoting import check_name, check_relpath, check_sha256
from imaging.core.tarball import tar_bytes

MANIFEST = "hotfix.yaml"
PAYLOAD = "files"
_KEYS = ("id", "description", "applies_to", "files", "restart", "pre_script", "post_script")


@dataclass(frozen=True)
class HotfixFile:
    """One file the hotfix adds or replaces, relative to the Apps volume, with the sha256 it must have."""

    path: str
    sha256: str


@dataclass(frozen=True)
class Hotfix:
    """A validated hotfix manifest."""

    id: str
    description: str
    applies_to: tuple[str, ...]
    files: tuple[HotfixFile, ...]
    restart: tuple[str, ...] = ()
    pre_script: str | None = None
    post_script: str | None = None

    def applies(self, release: str) -> bool:
        return release in self.applies_to

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "description": self.description, "applies_to": list(self.applies_to),
                "files": [{"path": f.path, "sha256": f.sha256} for f in self.files],
                "restart": list(self.restart), "pre_script": self.pre_script, "post_script": self.post_script}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Hotfix:
        return cls(id=d["id"], description=d["description"], applies_to=tuple(d["applies_to"]),
                   files=tuple(HotfixFile(f["path"], f["sha256"]) for f in d["files"]),
                   restart=tuple(d.get("restart") or ()), pre_script=d.get("pre_script"),
                   post_script=d.get("post_script"))


@dataclass(frozen=True)
class Package:
    """A hotfix and where its checked package folder lies (payload under ``root/files``)."""

    hotfix: Hotfix
    root: Path
    source: str
    scripts: dict[str, Path] = field(default_factory=dict)

    def payload(self, rel: str) -> Path:
        return self.root / PAYLOAD / Path(*PurePosixPath(rel).parts)


def parse_manifest(doc: Any, *, file: str, releases: Iterable[str]) -> Hotfix:
    """Check a loaded manifest mapping field by field; pure (no file access)."""
    known = set(releases)
    if not isinstance(doc, dict):
        raise InputError("a hotfix manifest must be a mapping", file=file, fix="start with 'id: <hotfix id>'")
    extra = sorted(set(doc) - set(_KEYS))
    if extra:
        raise InputError("unknown key", file=file, field=str(extra[0]), fix=f"allowed keys are {', '.join(_KEYS)}")
    for key in ("id", "description", "applies_to", "files"):
        if key not in doc:
            raise InputError("required key is missing", file=file, field=key, fix="add it")
    hid = check_name(doc["id"], field="id", file=file)
    if not isinstance(doc["description"], str) or not doc["description"].strip():
        raise InputError("the description must be a sentence", file=file, field="description",
                         fix="say what the hotfix fixes")
    applies = doc["applies_to"]
    if isinstance(applies, str):
        applies = [applies]
    if not isinstance(applies, list) or not applies:
        raise InputError("applies_to must list at least one release", file=file, field="applies_to",
                         fix="write applies_to: [\"2026C1.0\"]")
    for i, rel in enumerate(applies):
        if rel not in known:
            raise InputError("unknown release", file=file, field=f"applies_to[{i}]", value=rel,
                             fix=f"use a release defined in releases/ ({', '.join(sorted(known))})")
    files = doc["files"]
    if not isinstance(files, list) or not files:
        raise InputError("files must list at least one file", file=file, field="files",
                         fix="add - path: <relative path>, sha256: <hash>")
    seen: set[str] = set()
    out = []
    for i, entry in enumerate(files):
        where = f"files[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"path", "sha256"}:
            raise InputError("each file needs exactly path and sha256", file=file, field=where,
                             fix="write - path: server/bin/x.dll, sha256: <64 hex digits>")
        raw = entry["path"]
        if isinstance(raw, str) and (raw.startswith(("/", "\\")) or (len(raw) > 1 and raw[1] == ":")):
            raise InputError("absolute paths are not allowed", file=file, field=f"{where}.path", value=raw,
                             fix="give the path relative to the Apps volume, like server/bin/x.dll")
        rel = check_relpath(raw, field=f"{where}.path", file=file)
        if rel.lower() in seen:
            raise InputError("the same path is listed twice", file=file, field=f"{where}.path", value=rel,
                             fix="list each file once")
        seen.add(rel.lower())
        out.append(HotfixFile(rel, check_sha256(entry["sha256"], field=f"{where}.sha256", file=file)))
    restart = doc.get("restart") or []
    if not isinstance(restart, list):
        raise InputError("restart must be a list of service or process names", file=file, field="restart",
                         fix="write restart: [InstrumentServer]")
    for i, name in enumerate(restart):
        check_name(name, field=f"restart[{i}]", file=file)
    scripts = {}
    for key in ("pre_script", "post_script"):
        if doc.get(key) is not None:
            scripts[key] = check_relpath(doc[key], field=key, file=file)
            if not scripts[key].lower().endswith(".ps1"):
                raise InputError("scripts must be PowerShell files", file=file, field=key, value=doc[key],
                                 fix="name it <something>.ps1")
    return Hotfix(id=hid, description=doc["description"].strip(), applies_to=tuple(applies), files=tuple(out),
                  restart=tuple(restart), pre_script=scripts.get("pre_script"),
                  post_script=scripts.get("post_script"))


def _inside(root: Path, p: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def _check_tar(tar: tarfile.TarFile, source: str) -> None:
    """Refuse members that would land outside the folder they are unpacked into."""
    for m in tar.getmembers():
        name = m.name
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            raise InputError("the archive holds an absolute path", file=source, field=name,
                             fix="build the archive from inside the package folder")
        if ".." in PurePosixPath(name.replace("\\", "/")).parts:
            raise InputError("the archive holds a '..' path", file=source, field=name,
                             fix="build the archive from inside the package folder")
        if m.issym() or m.islnk():
            target = PurePosixPath(name).parent / m.linkname if m.issym() else PurePosixPath(m.linkname)
            if m.linkname.startswith("/") or ".." in PurePosixPath(os.path.normpath(str(target))).parts:
                raise InputError("a link in the archive leads outside the package", file=source, field=name,
                                 value=m.linkname, fix="ship the file itself, not a link")
        elif not (m.isfile() or m.isdir()):
            raise InputError("the archive holds a device or pipe", file=source, field=name,
                             fix="ship regular files only")


def open_package(path: Path, *, releases: Iterable[str], scratch: Path) -> Package:
    """Load and fully check a package folder or archive; an archive is unpacked into ``scratch`` first."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise InputError("hotfix package not found", file=source, fix="give the folder or archive of the hotfix")
    if path.is_dir():
        root = path
    else:
        if not tarfile.is_tarfile(path):
            raise InputError("not a tar archive", file=source,
                             fix="give the package folder, or a .tar/.tar.gz of it")
        with tarfile.open(path) as tar:
            _check_tar(tar, source)
            scratch.mkdir(parents=True, exist_ok=True)
            tar.extractall(scratch, filter="data")
        subdirs = [p for p in scratch.iterdir() if p.is_dir()]
        root = scratch if (scratch / MANIFEST).exists() else (subdirs[0] if len(subdirs) == 1 else scratch)
    mfile = root / MANIFEST
    if not mfile.is_file():
        raise InputError(f"the package has no {MANIFEST}", file=source, fix=f"add {MANIFEST} at its top level")
    try:
        doc = yaml.safe_load(mfile.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InputError(f"not valid YAML: {exc}", file=str(mfile), fix="correct the YAML syntax") from None
    hotfix = parse_manifest(doc, file=str(mfile), releases=releases)
    pkg = Package(hotfix=hotfix, root=root, source=source)
    payload_root = root / PAYLOAD
    for i, f in enumerate(hotfix.files):
        p = pkg.payload(f.path)
        where = f"files[{i}].path"
        if p.is_symlink() and not _inside(payload_root, p):
            raise InputError("the file is a link that leads outside the package", file=str(mfile), field=where,
                             value=f.path, fix="ship the file itself, not a link")
        if not _inside(payload_root, p):
            raise InputError("the file's folder is a link that leads outside the package", file=str(mfile),
                             field=where, value=f.path, fix="ship the folders themselves, not links")
        if not p.is_file():
            raise InputError(f"the file is not in the package under {PAYLOAD}/", file=str(mfile), field=where,
                             value=f.path, fix=f"put it at {PAYLOAD}/{f.path}")
        actual = sha256_file(p)
        if actual != f.sha256:
            raise InputError(f"sha256 of {PAYLOAD}/{f.path} is {actual}, the manifest says {f.sha256}",
                             file=str(mfile), field=f"files[{i}].sha256",
                             fix="rebuild the package (the file changed or the manifest is stale)")
    scripts = {}
    for key in ("pre_script", "post_script"):
        rel = getattr(hotfix, key)
        if rel:
            p = root / Path(*PurePosixPath(rel).parts)
            if not _inside(root, p) or not p.is_file():
                raise InputError("the script is not in the package", file=str(mfile), field=key, value=rel,
                                 fix="put the script inside the package folder")
            scripts[key] = p
    return Package(hotfix=hotfix, root=root, source=source, scripts=scripts)


def package_tar(pkg: Package) -> bytes:
    """The package as a reproducible tar (manifest, payload, scripts): what is stored and staged on hosts."""
    members: dict[str, bytes] = {MANIFEST: (pkg.root / MANIFEST).read_bytes()}
    for f in pkg.hotfix.files:
        members[f"{PAYLOAD}/{f.path}"] = pkg.payload(f.path).read_bytes()
    for key, p in pkg.scripts.items():
        members[getattr(pkg.hotfix, key)] = p.read_bytes()
    return tar_bytes(members)


def build_manifest(hotfix_id: str, description: str, applies_to: list[str], files: Mapping[str, bytes],
                   restart: list[str] | None = None) -> dict[str, Any]:
    """A manifest mapping for new files (used to write packages in tests, benchmarks and examples)."""
    return {"id": hotfix_id, "description": description, "applies_to": list(applies_to),
            "files": [{"path": rel, "sha256": sha256_bytes(data)} for rel, data in files.items()],
            "restart": list(restart or [])}


def write_package(folder: Path, manifest: Mapping[str, Any], files: Mapping[str, bytes]) -> Path:
    """Write a package folder: ``hotfix.yaml`` and ``files/<path>``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(yaml.safe_dump(dict(manifest), sort_keys=False), encoding="utf-8")
    for rel, data in files.items():
        p = folder / PAYLOAD / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return folder
