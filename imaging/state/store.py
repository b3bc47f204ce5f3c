"""The content-addressed artifact store: OS templates, Apps masters and hotfix payloads, stored once.

Layout under ``root``::

    blobs/<sha256[:2]>/<sha256>     the bytes, read-only, named by their hash (so stored once)
    manifests/<name>.json           name, kind, size, sha256, created, source, suffix
    tmp/                            files being written; renamed into place only when complete

Every byte is hashed in the same pass that copies it (no second read), with constant memory: each chunk is
read into one of a small ring of reusable buffers, hashed from a memoryview (by a helper thread,
overlapping the copy) and written from the same buffer, and the kernel is told to start writing it to disk
early so the final fsync is short. Files appear under their final name only through an atomic rename after
fsync, so a crash leaves at worst a temporary file in ``tmp/``, never a half blob or a half staged image.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from imaging.core.errors import ArtifactError, InputError
from imaging.core.quoting import check_name, check_sha256
from imaging.state.copying import (
    Progress,
    _advise,
    _copy_and_hash,
    _fsync_dir,
    _hash_file,
    _make_writable,
    _pump,
)

_KIND_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_SUFFIX_RE = re.compile(r"^(\.[A-Za-z0-9]{1,10}){0,2}$")
KNOWN_KINDS = ("os-template", "apps", "hotfix")


class ArtifactManifest(BaseModel):
    """What the store knows about one artifact; written once as ``manifests/<name>.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    kind: str
    size: int = Field(ge=0)
    sha256: str
    created: datetime
    source: str | None = None
    suffix: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return check_name(v, field="name")

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str) -> str:
        return check_sha256(v)

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        if not _KIND_RE.match(v):
            raise ValueError(f"kind must be a short lower-case word such as {', '.join(KNOWN_KINDS)}")
        return v

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v: str) -> str:
        if not _SUFFIX_RE.match(v):
            raise ValueError("suffix must be empty or like '.vhdx' or '.tar.gz'")
        return v

    @property
    def staged_name(self) -> str:
        """File name on a host: ``<name>-<sha256[:12]><suffix>`` (unique per content, readable)."""
        return f"{self.name}-{self.sha256[:12]}{self.suffix}"


class ArtifactStore:
    """Content-addressed store of immutable artifacts under one root folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs = self.root / "blobs"
        self.manifests = self.root / "manifests"
        self.tmp = self.root / "tmp"

    # --- layout ------------------------------------------------------------------------------------------

    def _ensure_dirs(self) -> None:
        for d in (self.blobs, self.manifests, self.tmp):
            d.mkdir(parents=True, exist_ok=True)

    def blob_path(self, sha256: str) -> Path:
        check_sha256(sha256)
        return self.blobs / sha256[:2] / sha256

    def _manifest_path(self, name: str) -> Path:
        return self.manifests / f"{check_name(name, field='name')}.json"

    # --- adding ------------------------------------------------------------------------------------------

    def add(self, path: Path, *, name: str, kind: str, source: str | None = None, suffix: str | None = None,
            progress: Progress | None = None, move: bool = False) -> ArtifactManifest:
        """Store the file at ``path`` as artifact ``name`` in one streaming pass; return its manifest.

        Artifacts are immutable: adding an existing name again is accepted only with identical content
        (and returns the existing manifest); different content is refused. Content already stored under
        another name is not stored twice. ``suffix`` defaults to the source file's suffix.

        ``move=True`` (for a file the caller made and will not keep, e.g. a fresh build): when ``path`` is on
        the store's file system it is hashed in place and renamed into the store instead of copied; the
        file is consumed: gone afterwards, whether it was stored, already there, or refused.
        """
        try:
            return self._add(Path(path), name=name, kind=kind, source=source, suffix=suffix, progress=progress,
                             move=move)
        finally:
            if move:
                Path(path).unlink(missing_ok=True)

    def _add(self, path: Path, *, name: str, kind: str, source: str | None, suffix: str | None,
             progress: Progress | None, move: bool) -> ArtifactManifest:
        check_name(name, field="name")
        path = Path(path)
        if suffix is None:
            suffix = path.suffix if _SUFFIX_RE.match(path.suffix) else ""
        if not _KIND_RE.match(kind):
            raise InputError("not an artifact kind", field="kind", value=kind,
                             fix=f"use a short lower-case word such as {', '.join(KNOWN_KINDS)}")
        if not _SUFFIX_RE.match(suffix):
            raise InputError("not a file suffix", field="suffix", value=suffix, fix="use e.g. '.vhdx' or ''")
        if not path.is_file():
            raise InputError("artifact source file not found", file=str(path), fix="check the path")
        existing = self._read_manifest(name) if self._manifest_path(name).exists() else None
        if existing is not None and self._same_as_existing(existing, path, progress):
            return existing
        self._ensure_dirs()
        if source is None:
            source = str(path.resolve())
        if move and os.stat(path).st_dev == os.stat(self.tmp).st_dev:
            handle, moved_name = tempfile.mkstemp(prefix=f"move-{name}-", dir=self.tmp)
            os.close(handle)
            moved = Path(moved_name)
            os.replace(path, moved)
            try:
                fd = os.open(moved, os.O_RDONLY)
                try:
                    os.fsync(fd)  # the maker may not have flushed it; the store's files are always durable
                finally:
                    os.close(fd)
                sha, size = _hash_file(moved, progress=progress)
                return self._finish_add(moved, sha, size, name=name, kind=kind, suffix=suffix, source=source,
                                        path=path)
            finally:
                moved.unlink(missing_ok=True)

        fd, tmp_name = tempfile.mkstemp(prefix=f"add-{name}-", dir=self.tmp)
        tmp = Path(tmp_name)
        try:
            h = hashlib.sha256()
            with open(path, "rb", buffering=0) as src, os.fdopen(fd, "wb", buffering=0) as out, \
                    open(tmp, "rb", buffering=0) as check:
                _advise(src.fileno(), "POSIX_FADV_SEQUENTIAL")
                total = os.fstat(src.fileno()).st_size
                size = _copy_and_hash(src.fileno(), out.fileno(), check.fileno(), h, total=total,
                                      progress=progress)
                if size != total or os.fstat(src.fileno()).st_size != total:
                    raise ArtifactError(f"{path} changed size while it was being added; add it again")
                os.fsync(out.fileno())
            sha = h.hexdigest()
            return self._finish_add(tmp, sha, size, name=name, kind=kind, suffix=suffix, source=source,
                                    path=path)
        finally:
            tmp.unlink(missing_ok=True)

    def _finish_add(self, tmp: Path, sha: str, size: int, *, name: str, kind: str, suffix: str, source: str,
                    path: Path) -> ArtifactManifest:
        """Put a complete, hashed file under its blob name and publish the manifest (or accept the same)."""
        existing = self._read_manifest(name) if self._manifest_path(name).exists() else None
        if existing is not None:
            if existing.sha256 != sha:  # the source changed while we read it
                raise self._immutable(existing, path, sha)
            self._store_blob(tmp, sha, size, replace=True)  # same content, damaged blob: repair it
            return existing
        self._store_blob(tmp, sha, size)
        manifest = ArtifactManifest(name=name, kind=kind, size=size, sha256=sha,
                                    created=datetime.now(UTC).replace(microsecond=0), source=source,
                                    suffix=suffix)
        return self._publish_manifest(manifest)

    def _same_as_existing(self, existing: ArtifactManifest, path: Path, progress: Progress | None) -> bool:
        """Re-adding a name: refuse other content; True when the stored blob is intact and identical (no
        copy needed); False when the content is identical but the blob is damaged (copy to repair it)."""
        size = path.stat().st_size
        if size != existing.size:
            raise self._immutable(existing, path, f"a {size}-byte file, not {existing.size} bytes")
        sha, _ = _hash_file(path, progress=progress)
        if sha != existing.sha256:
            raise self._immutable(existing, path, sha)
        try:
            self.verify(existing.name)
        except ArtifactError:
            return False
        return True

    @staticmethod
    def _immutable(existing: ArtifactManifest, path: Path, new: str) -> ArtifactError:
        return ArtifactError(
            f"artifact {existing.name} already exists with different content (stored sha256 "
            f"{existing.sha256}, new file {path} has {new}); artifacts are immutable: "
            f"add it under a new name")

    def _store_blob(self, tmp: Path, sha: str, size: int, *, replace: bool = False) -> None:
        """Move a complete, fsynced temp file to its blob path, unless an intact blob is already there.

        An existing blob is checked (size, then hash) before the new copy is dropped, so deduplication
        never points a new artifact at damaged bytes; a damaged one is replaced.
        """
        blob = self.blob_path(sha)
        try:
            intact = not replace and blob.stat().st_size == size and _hash_file(blob)[0] == sha
        except FileNotFoundError:
            intact = False
        if intact:
            return
        if blob.exists():
            _make_writable(blob)
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.replace(tmp, blob)
        _fsync_dir(blob.parent)

    def _publish_manifest(self, manifest: ArtifactManifest) -> ArtifactManifest:
        """Write the manifest without ever overwriting one (link fails if another add won the race)."""
        final = self._manifest_path(manifest.name)
        fd, tmp_name = tempfile.mkstemp(prefix=f"manifest-{manifest.name}-", dir=self.tmp)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp_name, final)
            except FileExistsError:
                other = self._read_manifest(manifest.name)
                if other.sha256 != manifest.sha256:
                    raise ArtifactError(f"artifact {manifest.name} was added concurrently with different "
                                        f"content ({other.sha256}); artifacts are immutable") from None
                return other
            _fsync_dir(final.parent)
            return manifest
        finally:
            Path(tmp_name).unlink(missing_ok=True)

    # --- reading -----------------------------------------------------------------------------------------

    def _read_manifest(self, name: str) -> ArtifactManifest:
        path = self._manifest_path(name)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArtifactError(f"artifact {name} is not in the store at {self.root}") from None
        except json.JSONDecodeError as e:
            raise ArtifactError(f"manifest {path} is not valid JSON: {e}") from None
        try:
            manifest = ArtifactManifest.model_validate(data)
        except ValidationError as e:
            raise ArtifactError(f"manifest {path} is invalid: {e.errors()[0]['msg']}") from None
        if manifest.name != name:
            raise ArtifactError(f"manifest {path} names artifact {manifest.name}, not {name}")
        return manifest

    def exists(self, name: str) -> bool:
        """Whether an artifact of that name has been added (its content is verified when used)."""
        return self._manifest_path(name).exists()

    def get(self, name: str) -> ArtifactManifest:
        """The manifest of artifact ``name``; ArtifactError if absent."""
        return self._read_manifest(name)

    def list(self) -> builtins.list[ArtifactManifest]:
        """All manifests, sorted by name."""
        if not self.manifests.is_dir():
            return []
        return [self._read_manifest(p.stem) for p in sorted(self.manifests.glob("*.json"))]

    def path_of(self, name: str, *, verify: bool = False) -> Path:
        """The blob of ``name``. Always checks it exists with the right size (cheap); re-hashes it only
        with ``verify=True`` (a full read), so callers pay for a hash where they rely on one."""
        m = self.get(name)
        blob = self.blob_path(m.sha256)
        try:
            size = blob.stat().st_size
        except FileNotFoundError:
            raise ArtifactError(f"artifact {name}: blob {blob} is missing (expected sha256 {m.sha256}); "
                                f"add the artifact again") from None
        if size != m.size:
            raise ArtifactError(f"artifact {name}: blob {blob} has {size} bytes, expected {m.size}; "
                                f"it is damaged: add the artifact again from its source")
        if verify:
            self.verify(name)
        return blob

    def verify(self, name: str, *, progress: Progress | None = None) -> ArtifactManifest:
        """Re-hash the blob; ArtifactError naming the artifact, expected and actual hash on mismatch."""
        m = self.get(name)
        blob = self.blob_path(m.sha256)
        if not blob.is_file():
            raise ArtifactError(f"artifact {name}: blob {blob} is missing (expected sha256 {m.sha256})")
        actual, _ = _hash_file(blob, progress=progress)
        if actual != m.sha256:
            raise ArtifactError(f"artifact {name} is corrupted: expected sha256 {m.sha256}, actual {actual} "
                                f"({blob}); add it again from its source")
        return m

    @contextlib.contextmanager
    def open_verified(self, name: str) -> Iterator[BinaryIO]:
        """Open the blob, hash it through the same open file, then hand it over rewound.

        Hashing the very descriptor we return leaves no window in which another file could be swapped in
        between the check and the use.
        """
        m = self.get(name)
        blob = self.blob_path(m.sha256)
        try:
            f = open(blob, "rb")  # noqa: SIM115 - closed below, after the caller is done
        except FileNotFoundError:
            raise ArtifactError(f"artifact {name}: blob {blob} is missing (expected sha256 {m.sha256})") \
                from None
        with f:
            h = hashlib.sha256()
            _pump(f, None, h, done=0, total=m.size, progress=None)
            if h.hexdigest() != m.sha256:
                raise ArtifactError(f"artifact {name} is corrupted: expected sha256 {m.sha256}, "
                                    f"actual {h.hexdigest()} ({blob})")
            f.seek(0)
            yield f

    # --- pruning -----------------------------------------------------------------------------------------

    def pruned_manifests(self) -> builtins.list[ArtifactManifest]:
        """Manifests of artifacts whose bytes were pruned (kept so that a rebuild can be checked)."""
        folder = self.root / "pruned"
        if not folder.is_dir():
            return []
        return [ArtifactManifest.model_validate(json.loads(p.read_text(encoding="utf-8")))
                for p in sorted(folder.glob("*.json"))]

    def prune(self, name: str) -> bool:
        """Remove artifact ``name``'s bytes; its manifest moves to ``pruned/<name>-<sha256[:12]>.json``.

        The blob is deleted only when no other artifact still names the same content (the store keeps
        each content once). Returns whether a blob was deleted. The name becomes free for a rebuild.
        """
        m = self.get(name)
        folder = self.root / "pruned"
        folder.mkdir(parents=True, exist_ok=True)
        kept = folder / f"{name}-{m.sha256[:12]}.json"
        kept.write_text(json.dumps(m.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
        self._manifest_path(name).unlink()
        _fsync_dir(self.manifests)
        if any(other.sha256 == m.sha256 for other in self.list()):
            return False
        blob = self.blob_path(m.sha256)
        if blob.exists():
            _make_writable(blob)
            blob.unlink()
            return True
        return False

    # --- staging -----------------------------------------------------------------------------------------

    def stage(self, name: str, dest_dir: Path, *, progress: Progress | None = None) -> Path:
        """Copy artifact ``name`` into ``dest_dir`` as ``<name>-<sha256[:12]><suffix>``; return that path.

        Idempotent: a staged file with the right size and hash is left alone (nothing copied); one with
        the wrong size or hash is replaced. The copy is hashed while it is written and compared with the
        manifest before an atomic rename, so a wrong file never appears under the final name; a corrupted
        blob is therefore refused here too.

        Resuming: a leftover ``<staged name>.partial`` is continued, not discarded. Its bytes are hashed
        (a local read, cheaper than copying again), the copy carries on from its end, and the whole is
        checked against the manifest. If a continued copy does not match, it is thrown away and copied
        once more from the start; if a fresh copy does not match, the blob is corrupt and the staging fails.
        """
        m = self.get(name)
        blob = self.path_of(name)  # exists with the right size
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        final = dest_dir / m.staged_name
        partial = dest_dir / (m.staged_name + ".partial")

        if final.exists():
            if final.stat().st_size == m.size and _hash_file(final)[0] == m.sha256:
                if progress is not None:
                    progress(m.size, m.size)
                return final
            _make_writable(final)
            final.unlink()

        resumed = partial.exists()
        if resumed and partial.stat().st_size > m.size:
            partial.unlink()
            resumed = False
        ok = self._copy_to_partial(m, blob, partial, progress=progress)
        if not ok and resumed:
            partial.unlink(missing_ok=True)
            ok = self._copy_to_partial(m, blob, partial, progress=progress)
        if not ok:
            partial.unlink(missing_ok=True)
            raise ArtifactError(f"artifact {name}: the copy to {final} does not match sha256 {m.sha256}; "
                                f"the stored blob {blob} is corrupted: add the artifact again")
        os.chmod(partial, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        os.replace(partial, final)
        _fsync_dir(dest_dir)
        return final

    def _copy_to_partial(self, m: ArtifactManifest, blob: Path, partial: Path, *,
                         progress: Progress | None) -> bool:
        """Bring ``partial`` up to the full artifact (continuing what is there); True if the hash matches."""
        h = hashlib.sha256()
        with open(partial, "ab+", buffering=0) as out, open(blob, "rb", buffering=0) as src:
            _advise(src.fileno(), "POSIX_FADV_SEQUENTIAL")
            have = os.fstat(out.fileno()).st_size
            if have:
                out.seek(0)
                _pump(out, None, h, done=0, total=m.size, progress=progress, limit=have)
                src.seek(have)
            _pump(src, out, h, done=have, total=m.size, progress=progress)
            os.fsync(out.fileno())
            size = os.fstat(out.fileno()).st_size
        return size == m.size and h.hexdigest() == m.sha256
