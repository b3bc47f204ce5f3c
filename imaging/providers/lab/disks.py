"""The lab's disk actions, each beside its undo: create (child or empty), delete, attach, detach; and what
is read from and written to a volume (backups, rescue, settings).

Mixed into ``LabProvider``."""

from __future__ import annotations

import base64
import errno
import os
import shutil
import threading
import uuid
from pathlib import Path

from imaging.core.errors import ProviderError
from imaging.core.files import atomic_write, read_json, write_json
from imaging.core.hashing import manifest_digest, sha256_file, tree_manifest
from imaging.model.inventory import PERSISTENT_ROLES
from imaging.providers.lab.fs import clone_tree, guest_rel


def _changed_files(root: str, template: str, skip: set[str]) -> list[str]:
    """Files under ``root`` that its template lacks or holds with other bytes (links are not followed).

    Unchanged files of a clone are hard links to the template's, so a folder costs two directory reads
    (the inode numbers come with the entries) and only files that differ are hashed.
    """
    found: list[str] = []
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        tdir = os.path.join(template, rel_dir) if rel_dir else template
        try:
            with os.scandir(tdir) as it:
                twins = {e.name: e for e in it}
        except (FileNotFoundError, NotADirectoryError):
            twins = {}
        with os.scandir(os.path.join(root, rel_dir) if rel_dir else root) as it:
            for entry in it:
                rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
                if rel.lower() in skip or entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append(rel)
                    continue
                twin = twins.get(entry.name)
                if twin is None or not twin.is_file(follow_symlinks=False):
                    found.append(rel)
                    continue
                if entry.inode() == twin.inode():
                    continue  # still the template's own file (clones live on the template's file system)
                a, b = entry.stat(follow_symlinks=False), twin.stat(follow_symlinks=False)
                if (a.st_ino, a.st_dev) == (b.st_ino, b.st_dev):
                    continue
                if a.st_size != b.st_size or sha256_file(Path(entry.path)) != sha256_file(Path(twin.path)):
                    found.append(rel)
    return sorted(found)


class DiskActions:
    """The lab's disk actions, each beside its undo: create (child or empty), delete, attach, detach; and what"""

    # --- disks ---------------------------------------------------------------------------------------
    def _do_create_child_disk(self, host: str, path: str, parent_path: str, role: str) -> dict:
        d = self.path(host, path)
        if (d / "disk.json").exists():
            meta = read_json(d / "disk.json")
            if meta.get("parent") != parent_path:
                raise ProviderError(f"{path} exists with another parent ({meta.get('parent')})", host=host,
                                    step="create_child_disk")
            return {"changed": False}
        pdir, pmeta = self._disk(host, parent_path, step="create_child_disk")
        if not pmeta.get("read_only"):
            raise ProviderError(f"parent {parent_path} is not read-only; a parent must never change", host=host,
                                step="create_child_disk")
        partial = d.with_name(d.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        (partial / "content").mkdir(parents=True)
        files = clone_tree(pdir / "content", partial / "content")
        write_json(partial / "disk.json", {"role": role, "label": "Apps" if role == "apps" else None,
                                           "parent": parent_path, "read_only": False, "size_gb": 0,
                                           "attached_to": None})
        os.replace(partial, d)
        return {"changed": True, "files": files}

    def _do_create_disk(self, host: str, path: str, size_gb: int, label: str, role: str) -> dict:
        d = self.path(host, path)
        if (d / "disk.json").exists():
            meta = read_json(d / "disk.json")
            if meta.get("role") != role or meta.get("label") != label:
                raise ProviderError(f"{path} exists as a {meta.get('role')} disk labelled {meta.get('label')}",
                                    host=host, step="create_disk")
            return {"changed": False}
        partial = d.with_name(d.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        (partial / "content").mkdir(parents=True)
        write_json(partial / "disk.json", {"role": role, "label": label, "parent": None, "read_only": False,
                                           "size_gb": size_gb, "attached_to": None})
        os.replace(partial, d)
        return {"changed": True}

    def _do_delete_disk(self, host: str, path: str, role: str) -> dict:
        d = self.path(host, path)
        half = self._do_remove_partial(host, path)["changed"]  # a creation the process died in
        if not (d / "disk.json").exists():
            return {"changed": half}
        meta = read_json(d / "disk.json")
        if meta["role"] in PERSISTENT_ROLES or role in PERSISTENT_ROLES:
            raise ProviderError(f"refusing to delete {path}: {meta['role']} disks are never deleted", host=host,
                                step="delete_disk")
        if meta.get("read_only"):
            raise ProviderError(f"refusing to delete {path}: it is a read-only parent", host=host,
                                step="delete_disk")
        if meta.get("attached_to"):
            raise ProviderError(f"refusing to delete {path}: attached to {meta['attached_to']}", host=host,
                                step="delete_disk")
        self._discard(d)
        return {"changed": True}

    def _do_remove_partial(self, host: str, path: str) -> dict:
        """Remove what a step killed while writing ``path`` left under ``path.partial`` (its finished result,
        if any, stays)."""
        d = self.path(host, path)
        partial = d.with_name(d.name + ".partial")
        if not partial.exists():
            return {"changed": False}
        self._discard(partial)
        return {"changed": True}

    def _discard(self, d: Path) -> None:
        """Delete a disk folder the way Hyper-V deletes a file: at once. The lab renames it into a trash
        folder (one rename) and frees the space in the background; leftovers are purged on the next start."""
        trash = self.lab / ".trash"
        trash.mkdir(exist_ok=True)
        try:
            os.replace(d, trash / f"{d.name}.{uuid.uuid4().hex[:8]}")
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            shutil.rmtree(d)  # the host's drive is a file system of its own (a small test drive): delete here
            return
        self._start_purge()

    def _start_purge(self) -> None:
        with self._locks_guard:
            if self._purger is not None and self._purger.is_alive():
                self._purge_again = True
                return
            self._purge_again = False
            self._purger = threading.Thread(target=self._purge, name="lab-trash", daemon=True)
            self._purger.start()

    def _purge(self) -> None:
        while True:
            for entry in list((self.lab / ".trash").glob("*")):
                shutil.rmtree(entry, ignore_errors=True)
            with self._locks_guard:
                if not self._purge_again:
                    return
                self._purge_again = False

    def _do_attach_disk(self, host: str, vm: str, slot: int, path: str) -> dict:
        rec = self._vm(host, vm, step="attach_disk")
        d, meta = self._disk(host, path, step="attach_disk")
        current = rec["slots"].get(str(slot))
        if current == path:
            return {"changed": False}
        if rec["power"] != "Off":
            raise ProviderError(f"cannot attach {path} to {vm}: the VM is running", host=host, step="attach_disk")
        if current:
            raise ProviderError(f"slot {slot} of {vm} already holds {current}", host=host, step="attach_disk")
        if meta.get("read_only"):
            raise ProviderError(f"cannot attach read-only parent {path} to a VM", host=host, step="attach_disk")
        if meta.get("attached_to") and meta["attached_to"] != vm:
            raise ProviderError(f"{path} is already attached to {meta['attached_to']}", host=host,
                                step="attach_disk")
        rec["slots"][str(slot)] = path
        meta["attached_to"] = vm
        write_json(d / "disk.json", meta)
        write_json(self._vm_file(host, vm), rec)
        return {"changed": True}

    def _do_detach_disk(self, host: str, vm: str, slot: int, path: str) -> dict:
        rec = self._vm(host, vm, step="detach_disk")
        current = rec["slots"].get(str(slot))
        if current is None:
            return {"changed": False}
        if current != path:
            raise ProviderError(f"slot {slot} of {vm} holds {current}, not {path}", host=host, step="detach_disk")
        if rec["power"] != "Off":
            raise ProviderError(f"cannot detach {path} from {vm}: the VM is running", host=host, step="detach_disk")
        d, meta = self._disk(host, path, step="detach_disk")
        del rec["slots"][str(slot)]
        meta["attached_to"] = None
        write_json(d / "disk.json", meta)
        write_json(self._vm_file(host, vm), rec)
        return {"changed": True}

    # --- volume contents -----------------------------------------------------------------------------
    def _do_backup_volume(self, host: str, vm: str, path: str, role: str, label: str, dest_path: str,
                          keep: int) -> dict:
        dest = self.path(host, dest_path)
        if (dest / "manifest.json").exists():
            return {"changed": False, "path": dest_path}
        src, _ = self._disk(host, path, step="backup_volume")
        partial = dest.with_name(dest.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir(parents=True)
        expected = tree_manifest(src / "content")
        base = _last_verified_backup(dest.parent, f"-{role}")
        linked = _incremental_copy(src / "content", partial / "content", expected, base)
        copied = tree_manifest(partial / "content")
        if copied != expected:
            shutil.rmtree(partial)
            raise ProviderError(f"backup of {label} did not verify", host=host, step="backup_volume")
        write_json(partial / "manifest.json", {"vm": vm, "role": role, "label": label, "source": path,
                                               "files": expected, "digest": manifest_digest(expected),
                                               "base": base.name if base else None, "linked": linked})
        os.replace(partial, dest)
        suffix = f"-{role}"
        siblings = sorted(p for p in dest.parent.iterdir() if p.name.endswith(suffix) and p.is_dir())
        removed = []
        for old in siblings[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
            removed.append(old.name)
        return {"changed": True, "path": dest_path, "files": len(expected), "linked": linked, "removed": removed}

    def _do_rescue_user_files(self, host: str, vm: str, os_path: str, template_path: str, var_path: str,
                              dest_rel: str, exclude: list[str]) -> dict:
        os_dir, _ = self._disk(host, os_path, step="rescue_user_files")
        tpl_dir, _ = self._disk(host, template_path, step="rescue_user_files")
        var_dir, _ = self._disk(host, var_path, step="rescue_user_files")
        dest = var_dir / "content" / dest_rel
        listing = dest / "rescued.json"
        if listing.exists():
            return {"changed": False, "files": read_json(listing)["files"]}
        skip = {"/".join(guest_rel(x)).lower() for x in exclude} | {"volumes"}
        found = _changed_files(str(os_dir / "content"), str(tpl_dir / "content"), skip)
        root = os_dir / "content"
        if not found:
            return {"changed": False, "files": []}
        for rel in found:
            target = dest / "files" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, target)
        write_json(listing, {"vm": vm, "from": os_path, "files": sorted(found)})
        return {"changed": True, "files": sorted(found)}

    def _do_write_settings(self, host: str, path: str, files: dict[str, str], manifest_name: str) -> dict:
        d, _ = self._disk(host, path, step="write_settings")
        content = d / "content"
        wanted = {rel: base64.b64decode(b64) for rel, b64 in files.items()}  # bytes, as rendered
        current = tree_manifest(content)
        from imaging.core.hashing import sha256_bytes

        expected = {rel: sha256_bytes(b) for rel, b in wanted.items()}
        if {k: v for k, v in current.items() if k != manifest_name} == expected and manifest_name in current:
            return {"changed": False}
        for rel in current:
            if rel not in wanted:
                (content / rel).unlink()
        for rel, data in wanted.items():
            atomic_write(content.joinpath(*rel.split("/")), data)
        write_json(content.joinpath(*manifest_name.split("/")), {"files": expected,
                                                                  "digest": manifest_digest(expected)})
        return {"changed": True, "files": len(wanted)}

    def _do_read_volume(self, host: str, path: str, max_bytes: int, only: list[str] | None = None,
                        hash_over: int | None = None) -> dict:
        """Every file of a small volume, or only the files under the ``only`` relative paths; read only, and
        only while no running VM holds the disk (Mount-VHD refuses it then: read in the guest instead)."""
        d = self._offline_disk(host, path, "read_volume")
        files: dict[str, str] = {}
        hashed: dict[str, str] = {}
        total = 0
        wanted = [w.lower() for w in (only or [])]
        for rel, digest in tree_manifest(d / "content").items():
            if wanted and not any(rel.lower() == w or rel.lower().startswith(w + "/") for w in wanted):
                continue
            if hash_over and (d / "content" / rel).stat().st_size > hash_over:  # answered by its sha256 only
                hashed[rel] = digest
                continue
            data = (d / "content" / rel).read_bytes()
            total += len(data)
            if total > max_bytes:
                raise ProviderError(f"{path} holds more than {max_bytes} bytes; it is not a settings volume",
                                    host=host, step="read_volume")
            files[rel] = base64.b64encode(data).decode("ascii")
        return {"changed": False, "files": files, "hashed": hashed}

    def _do_write_volume_files(self, host: str, path: str, files: dict[str, str]) -> dict:
        """Add files to a volume (never removes any): how captured drift reaches Var before a reimage."""
        d, _ = self._disk(host, path, step="write_volume_files")
        written = []
        for rel, b64 in sorted(files.items()):
            data = base64.b64decode(b64)
            target = d.joinpath("content", *rel.split("/"))
            if target.exists() and target.read_bytes() == data:
                continue
            atomic_write(target, data)
            written.append(rel)
        return {"changed": bool(written), "written": written}


def _last_verified_backup(folder: Path, suffix: str) -> Path | None:
    """The newest finished backup of this role (its manifest is written last, so it was verified)."""
    done = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.endswith(suffix)
                  and (p / "manifest.json").exists()) if folder.exists() else []
    return done[-1] if done else None


def _incremental_copy(src: Path, dst: Path, expected: dict[str, str], base: Path | None) -> int:
    """Copy a volume's files into a backup; a file identical (by sha256) to the one in the last verified
    backup is hard-linked from it instead of copied, so a backup writes only what changed since. Backups are
    never changed in place, so sharing a file between two of them is safe. Returns the files linked."""
    before = read_json(base / "manifest.json").get("files", {}) if base else {}
    for dirpath, _dirs, _files in os.walk(src):
        (dst / os.path.relpath(dirpath, src)).mkdir(parents=True, exist_ok=True)
    linked = 0
    for rel, digest in expected.items():
        target = dst / rel
        if digest.startswith("link:"):
            os.symlink(digest[len("link:"):], target)
        elif base is not None and before.get(rel) == digest and (base / "content" / rel).is_file():
            os.link(base / "content" / rel, target)
            linked += 1
        else:
            shutil.copy2(src / rel, target)
    return linked
