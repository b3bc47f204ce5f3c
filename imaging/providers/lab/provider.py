"""The lab provider: carries out every step on a local folder that behaves like Hyper-V hosts and guests.

It enforces the rules Hyper-V enforces (no attach or detach on a running VM, a disk on one VM at most,
parents read-only and never modified) and the tool's own (Var and Data disks are never deleted or
recreated), so that a workflow that passes here is a workflow that respects them. Failures can be injected
per VM and action to rehearse what happens when a real host misbehaves.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import tarfile
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imaging.core.errors import LockHeld, ProviderError
from imaging.core.hashing import manifest_digest, sha256_file, tree_manifest
from imaging.model.inventory import PERSISTENT_ROLES
from imaging.model.steps import Step
from imaging.providers.lab.fs import atomic_write, clone_tree, copy_tree, guest_rel, host_path, read_json, write_json

FaultHook = Callable[[Step], None]


class InjectedFault(ProviderError):
    """A failure the lab was told to produce (tests and rehearsals)."""


def faults_from_env(spec: str | None) -> FaultHook | None:
    """``IMAGING_LAB_FAULTS="NDXZOOM:health_check,NDXWISH:start_vm"``: fail that action on that VM."""
    if not spec:
        return None
    pairs = set()
    for item in spec.split(","):
        if item.strip():
            vm, _, action = item.strip().partition(":")
            pairs.add((vm.upper(), action))

    def hook(step: Step) -> None:
        vm = str(step.inputs.get("vm", "")).upper()
        if (vm, step.action) in pairs or ("*", step.action) in pairs:
            raise InjectedFault(f"injected failure of {step.action} on {vm}", host=step.host, step=step.action)

    return hook


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


class LabProvider:
    """Steps carried out on ``lab`` (a folder). Thread-safe: a host's VM and disk records change under that
    host's lock, so instruments on different hosts proceed in parallel, as on real hosts."""

    name = "lab"

    def __init__(self, lab: Path, *, fault: FaultHook | None = None) -> None:
        self.lab = Path(lab)
        self.lab.mkdir(parents=True, exist_ok=True)
        self.fault = fault
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()
        self._purger: threading.Thread | None = None
        self._purge_again = False
        if (self.lab / ".trash").exists():
            self._start_purge()

    def close(self) -> None:
        """The lab holds no sessions; wait for deleted disks to be freed."""
        purger = self._purger
        if purger is not None:
            purger.join()

    # --- paths ---------------------------------------------------------------------------------------
    def path(self, host: str, winpath: str) -> Path:
        return host_path(self.lab, host, winpath)

    def _vm_file(self, host: str, vm: str) -> Path:
        return self.lab / "hosts" / host / "vms" / f"{vm}.json"

    def _vm(self, host: str, vm: str, *, step: str) -> dict[str, Any]:
        f = self._vm_file(host, vm)
        if not f.exists():
            raise ProviderError(f"VM {vm} does not exist", host=host, step=step)
        return read_json(f)

    def _disk(self, host: str, winpath: str, *, step: str) -> tuple[Path, dict[str, Any]]:
        d = self.path(host, winpath)
        meta = d / "disk.json"
        if not meta.exists():
            raise ProviderError(f"disk {winpath} does not exist", host=host, step=step)
        return d, read_json(meta)

    def guest_root(self, host: str, vm: str) -> Path:
        """The running guest's C: drive (the content of the OS disk in slot 0)."""
        rec = self._vm(host, vm, step="guest")
        os_disk = rec["slots"].get("0")
        if not os_disk:
            raise ProviderError(f"VM {vm} has no OS disk", host=host)
        return self.path(host, os_disk) / "content"

    def guest_path(self, host: str, vm: str, winpath: str) -> Path:
        return self.guest_root(host, vm).joinpath(*guest_rel(winpath))

    def guest_write(self, host: str, vm: str, winpath: str, data: bytes) -> None:
        """What a user or program in the guest does when it saves a file (through links, by rename)."""
        p = self.guest_path(host, vm, winpath)
        atomic_write(p.parent.resolve() / p.name, data)

    # --- dispatch ------------------------------------------------------------------------------------
    def run(self, step: Step) -> dict[str, Any]:
        if self.fault is not None:
            self.fault(step)
        handler = getattr(self, f"_do_{step.action}", None)
        if handler is None:
            raise ProviderError(f"the lab cannot carry out {step.action}", host=step.host, step=step.action)
        with self._locks_guard:
            lock = self._locks.setdefault(step.host, threading.RLock())
        with lock:
            return handler(step.host, **step.inputs)

    # --- host-level actions --------------------------------------------------------------------------
    def _do_preflight(self, host: str, vm: str, artifacts: list[dict[str, Any]], need_bytes: int) -> dict:
        hroot = self.lab / "hosts" / host
        hroot.mkdir(parents=True, exist_ok=True)
        missing = []
        for art in artifacts:
            d = self.path(host, art["path"])
            meta = d / "disk.json"
            if not meta.exists() or read_json(meta).get("sha256") != art["sha256"]:
                missing.append(art["name"])
        free = shutil.disk_usage(hroot).free
        if free < need_bytes:
            raise ProviderError(f"not enough space: {free} bytes free, {need_bytes} needed", host=host,
                                step="preflight")
        if missing:
            raise ProviderError(f"artifacts not staged on the host: {', '.join(missing)}; run "
                                "`invoke stage` for this release first", host=host, step="preflight")
        return {"changed": False, "host_ok": True, "vm_exists": self._vm_file(host, vm).exists(),
                "free_bytes": free, "missing": missing}

    def _do_acquire_lock(self, host: str, vm: str, lock_path: str, op_id: str, owner: str) -> dict:
        f = self.path(host, lock_path)
        f.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"op_id": op_id, "owner": owner, "since": datetime.now(UTC).isoformat()}).encode()
        try:
            fd = os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = json.loads(f.read_bytes() or b"{}")
            if held.get("op_id") == op_id:
                return {"changed": False}
            raise LockHeld(f"{vm} is locked by operation {held.get('op_id')} of {held.get('owner')} since "
                           f"{held.get('since')}; wait for it, or finish it with `invoke resume --instrument=...` "
                           "or `invoke rollback --instrument=...`") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
        return {"changed": True}

    def _do_release_lock(self, host: str, vm: str, lock_path: str, op_id: str) -> dict:
        f = self.path(host, lock_path)
        if not f.exists():
            return {"changed": False}
        held = json.loads(f.read_bytes() or b"{}")
        if held.get("op_id") != op_id:
            raise ProviderError(f"lock of {vm} belongs to operation {held.get('op_id')}, not {op_id}",
                                host=host, step="release_lock")
        f.unlink()
        return {"changed": True}

    def _do_ensure_vm(self, host: str, vm: str, generation: int, memory_mb: int, cpus: int, switch: str) -> dict:
        f = self._vm_file(host, vm)
        if f.exists():
            return {"changed": False}
        write_json(f, {"name": vm, "power": "Off", "slots": {}, "generation": generation,
                       "memory_mb": memory_mb, "cpus": cpus, "switch": switch})
        return {"changed": True}

    def _do_get_state(self, host: str, vm: str) -> dict:
        f = self._vm_file(host, vm)
        if not f.exists():
            return {"changed": False, "exists": False, "power": "Absent", "disks": []}
        rec = read_json(f)
        disks = []
        for slot, path in sorted(rec["slots"].items(), key=lambda x: int(x[0])):
            meta = self.path(host, path) / "disk.json"
            parent = read_json(meta).get("parent") if meta.exists() else None
            disks.append({"slot": int(slot), "path": path, "parent": parent})
        return {"changed": False, "exists": True, "power": rec["power"], "disks": disks}

    def _do_stop_vm(self, host: str, vm: str, timeout_s: int) -> dict:
        rec = self._vm(host, vm, step="stop_vm")
        if rec["power"] == "Off":
            return {"changed": False, "forced": False}
        rec["power"] = "Off"
        write_json(self._vm_file(host, vm), rec)
        return {"changed": True, "forced": False}

    def _do_start_vm(self, host: str, vm: str) -> dict:
        rec = self._vm(host, vm, step="start_vm")
        if rec["power"] == "Running":
            return {"changed": False}
        if "0" not in rec["slots"]:
            raise ProviderError(f"VM {vm} has no OS disk in slot 0", host=host, step="start_vm")
        rec["power"] = "Running"
        write_json(self._vm_file(host, vm), rec)
        return {"changed": True}

    def _do_wait_guest(self, host: str, vm: str, timeout_s: int) -> dict:
        rec = self._vm(host, vm, step="wait_guest")
        if rec["power"] != "Running":
            raise ProviderError(f"guest {vm} does not answer: the VM is {rec['power']}", host=host, step="wait_guest")
        return {"changed": False}

    def _do_stage_artifact(self, host: str, name: str, sha256: str, share_path: str, dest_path: str) -> dict:
        dest = self.path(host, dest_path)
        meta = dest / "disk.json"
        if meta.exists() and read_json(meta).get("sha256") == sha256:
            return {"changed": False, "bytes": 0}
        src = self.path(host, share_path)
        if not src.exists():
            raise ProviderError(f"{share_path} is not on the share; publish the release first (`invoke stage`)",
                                host=host, step="stage_artifact")
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        (partial / "content").mkdir(parents=True)
        blob = partial / "image.tar"
        shutil.copyfile(src, blob)
        actual = sha256_file(blob)
        if actual != sha256:
            shutil.rmtree(partial)
            raise ProviderError(f"{name}: sha256 on arrival is {actual}, expected {sha256}; the share copy is "
                                "corrupt, publish it again", host=host, step="stage_artifact")
        with tarfile.open(blob) as tar:
            tar.extractall(partial / "content", filter="data")
        blob.unlink()
        write_json(partial / "disk.json", {"role": "template", "label": None, "parent": None, "read_only": True,
                                           "size_gb": 0, "attached_to": None, "sha256": sha256, "name": name})
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(partial, dest)
        return {"changed": True, "bytes": src.stat().st_size}

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
        if not (d / "disk.json").exists():
            return {"changed": False}
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

    def _discard(self, d: Path) -> None:
        """Delete a disk folder the way Hyper-V deletes a file: at once. The lab renames it into a trash
        folder (one rename) and frees the space in the background; leftovers are purged on the next start."""
        trash = self.lab / ".trash"
        trash.mkdir(exist_ok=True)
        os.replace(d, trash / f"{d.name}.{uuid.uuid4().hex[:8]}")
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
        copy_tree(src / "content", partial / "content")
        expected = tree_manifest(src / "content")
        copied = tree_manifest(partial / "content")
        if copied != expected:
            shutil.rmtree(partial)
            raise ProviderError(f"backup of {label} did not verify", host=host, step="backup_volume")
        write_json(partial / "manifest.json", {"vm": vm, "role": role, "label": label, "source": path,
                                               "files": expected, "digest": manifest_digest(expected)})
        os.replace(partial, dest)
        suffix = f"-{role}"
        siblings = sorted(p for p in dest.parent.iterdir() if p.name.endswith(suffix) and p.is_dir())
        removed = []
        for old in siblings[:-keep] if keep > 0 else []:
            shutil.rmtree(old)
            removed.append(old.name)
        return {"changed": True, "path": dest_path, "files": len(expected), "removed": removed}

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
        wanted = {rel: text.encode("utf-8") for rel, text in files.items()}
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

    def _do_read_volume(self, host: str, path: str, max_bytes: int) -> dict:
        d, _ = self._disk(host, path, step="read_volume")
        files: dict[str, str] = {}
        total = 0
        for rel in tree_manifest(d / "content"):
            data = (d / "content" / rel).read_bytes()
            total += len(data)
            if total > max_bytes:
                raise ProviderError(f"{path} holds more than {max_bytes} bytes; it is not a settings volume",
                                    host=host, step="read_volume")
            files[rel] = base64.b64encode(data).decode("ascii")
        return {"changed": False, "files": files}

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

    # --- the guest -----------------------------------------------------------------------------------
    def _running_guest(self, host: str, vm: str, step: str) -> tuple[dict[str, Any], Path]:
        rec = self._vm(host, vm, step=step)
        if rec["power"] != "Running":
            raise ProviderError(f"guest {vm} is not running", host=host, step=step)
        return rec, self.guest_root(host, vm)

    def _volume_by_label(self, host: str, rec: dict[str, Any], label: str, step: str) -> Path:
        for path in rec["slots"].values():
            meta = read_json(self.path(host, path) / "disk.json")
            if meta.get("label") == label:
                return self.path(host, path) / "content"
        raise ProviderError(f"no attached volume is labelled {label}", host=host, step=step)

    def _do_configure_guest(self, host: str, vm: str, volumes: list[dict[str, str]]) -> dict:
        rec, groot = self._running_guest(host, vm, "configure_guest")
        changed = False
        for vol in volumes:
            target = self._volume_by_label(host, rec, vol["label"], "configure_guest")
            mount = groot.joinpath(*guest_rel(vol["mount"]))
            mount.parent.mkdir(parents=True, exist_ok=True)
            want = os.path.relpath(target, mount.parent)
            if mount.is_symlink() and os.readlink(mount) == want:
                pass
            else:
                if mount.is_symlink():
                    mount.unlink()
                elif mount.exists():
                    if any(mount.iterdir()):
                        raise ProviderError(f"{vol['mount']} exists and is not empty; refusing to mount over it",
                                            host=host, step="configure_guest")
                    mount.rmdir()
                os.symlink(want, mount)
                changed = True
            link = groot.joinpath(*guest_rel(vol["link"]))
            link.parent.mkdir(parents=True, exist_ok=True)
            want_link = os.path.relpath(mount, link.parent)
            if link.is_symlink():
                if os.readlink(link) == want_link:
                    continue
                link.unlink()
            elif link.exists():
                if link.is_dir() and not any(link.iterdir()):
                    link.rmdir()  # an empty placeholder folder is replaced by the junction
                else:
                    raise ProviderError(f"{vol['link']} is a folder with content; refusing to replace it by a "
                                        "link (move its content to the volume first)", host=host,
                                        step="configure_guest")
            os.symlink(want_link, link)
            changed = True
        return {"changed": changed}

    def _do_health_check(self, host: str, vm: str, expect_apps_version: str, links: list[dict[str, str]],
                         expect_settings_sha256: str) -> dict:
        rec, groot = self._running_guest(host, vm, "health_check")
        problems = []
        resolved = {}
        for item in links:
            p = groot.joinpath(*guest_rel(item["link"]))
            target = self._volume_by_label(host, rec, item["label"], "health_check")
            ok = p.exists() and p.resolve() == target.resolve()
            resolved[item["link"]] = item["label"] if ok else None
            if not ok:
                problems.append(f"{item['link']} does not lead to the {item['label']} volume")
        version_file = groot.joinpath(*guest_rel("C:\\Instrument\\Apps\\version.txt"))
        version = version_file.read_text().strip() if version_file.exists() else None
        if version != expect_apps_version:
            problems.append(f"Apps version is {version!r}, expected {expect_apps_version!r}")
        prov_file = groot.joinpath(*guest_rel("C:\\Instrument\\Settings\\.imaging\\manifest.json"))
        digest = read_json(prov_file).get("digest") if prov_file.exists() else None
        if digest != expect_settings_sha256:
            problems.append(f"Settings digest is {digest!r}, expected {expect_settings_sha256!r}")
        if problems:
            raise ProviderError("health check failed: " + "; ".join(problems), host=host, step="health_check")
        return {"changed": False, "apps_version": version, "links": resolved, "settings": {"digest": digest}}

    def _do_write_record(self, host: str, vm: str, record: dict[str, Any]) -> dict:
        _, groot = self._running_guest(host, vm, "write_record")
        f = groot.joinpath(*guest_rel("C:\\Instrument\\Var\\imaging\\record.json"))
        if f.exists() and read_json(f) == record:
            return {"changed": False}
        write_json(f.parent.resolve() / f.name, record)
        return {"changed": True}

    # --- build hosts ---------------------------------------------------------------------------------
    def _image_dir(self, host: str, partial: Path, final: Path, **meta: Any) -> dict[str, Any]:
        """Seal a built lab image: hash its content as a reproducible tar, mark it read-only, rename it."""
        import tempfile

        from imaging.images.build import tar_tree

        with tempfile.TemporaryDirectory(prefix="lab-image-") as tmp:
            tar = tar_tree(partial / "content", Path(tmp) / "image.tar")
            sha, size = sha256_file(tar), tar.stat().st_size
        write_json(partial / "disk.json", {"role": "template", "label": meta.get("label"), "parent": None,
                                           "read_only": True, "size_gb": meta.get("size_gb", 0),
                                           "attached_to": None, "sha256": sha, "name": final.name,
                                           "image_size": size})
        os.replace(partial, final)
        return {"sha256": sha, "size": size}

    def _do_build_apps_disk(self, host: str, vhd_path: str, source_path: str, label: str, size_gb: int,
                            work_root: str, expect_version: str) -> dict:
        final = self.path(host, vhd_path)
        changed = False
        if not (final / "disk.json").exists():
            src = self.path(host, source_path)
            if not src.is_dir():
                raise ProviderError(f"source folder {source_path} not found", host=host, step="build_apps_disk")
            version = src / "version.txt"
            found = version.read_text(encoding="utf-8").strip() if version.is_file() else None
            if found != expect_version:
                raise ProviderError(f"{source_path}\\version.txt says {found!r}, the release expects "
                                    f"{expect_version!r}", host=host, step="build_apps_disk")
            partial = final.with_name(final.name + ".partial")
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir(parents=True)
            copy_tree(src, partial / "content")
            self._image_dir(host, partial, final, label=label, size_gb=size_gb)
            changed = True
        meta = read_json(final / "disk.json")
        content = final / "content"
        files = [{"path": rel, "size": (content / rel).stat().st_size, "sha256": sha}
                 for rel, sha in sorted(tree_manifest(content).items())]
        dirs = sorted(p.relative_to(content).as_posix() for p in content.rglob("*") if p.is_dir())
        return {"changed": changed, "path": vhd_path, "label": label, "sha256": meta["sha256"],
                "size": meta["image_size"], "files": files, "directories": dirs}

    def _do_build_template(self, host: str, vm: str, version: str, iso_path: str, image_index: int, vhd_path: str,
                           work_root: str, size_gb: int, memory_mb: int, switch: str, unattend: str,
                           provision: str, timeout_s: int) -> dict:
        # In the lab the "installation image" is a folder holding the template's C: drive; the answer file
        # and provisioning script are placed where Windows Setup would find them.
        final = self.path(host, vhd_path)
        changed = False
        if not (final / "disk.json").exists():
            base = self.path(host, iso_path)
            if not base.is_dir():
                raise ProviderError(f"installation image {iso_path} not found", host=host, step="build_template")
            partial = final.with_name(final.name + ".partial")
            if partial.exists():
                shutil.rmtree(partial)
            partial.mkdir(parents=True)
            copy_tree(base, partial / "content")
            panther = partial / "content" / "Windows" / "Panther"
            scripts = partial / "content" / "Windows" / "Setup" / "Scripts"
            panther.mkdir(parents=True, exist_ok=True)
            scripts.mkdir(parents=True, exist_ok=True)
            (panther / "unattend.xml").write_text(unattend, encoding="utf-8")
            (scripts / "provision.ps1").write_text(provision, encoding="utf-8")
            self._image_dir(host, partial, final, size_gb=size_gb)
            changed = True
        meta = read_json(final / "disk.json")
        return {"changed": changed, "path": vhd_path, "version": version, "sha256": meta["sha256"],
                "size": meta["image_size"]}

    def _do_remove_image(self, host: str, path: str, sha256: str) -> dict:
        d = self.path(host, path)
        if not (d / "disk.json").exists():
            return {"changed": False, "path": path}
        meta = read_json(d / "disk.json")
        if meta.get("sha256") != sha256:
            raise ProviderError(f"{path} holds sha256 {meta.get('sha256')}, not {sha256}; refusing to remove it",
                                host=host, step="remove_image")
        if meta.get("attached_to"):
            raise ProviderError(f"{path} is attached to {meta['attached_to']}; refusing to remove it", host=host,
                                step="remove_image")
        for other in (self.lab / "hosts" / host).rglob("disk.json"):
            if other.parent != d and read_json(other).get("parent") == path:
                raise ProviderError(f"{other.parent.name} is a child of {path}; refusing to remove it", host=host,
                                    step="remove_image")
        self._discard(d)
        return {"changed": True, "path": path}

    def _do_run_guest_command(self, host: str, vm: str, command: list[str], var_path: str, marker: str,
                              record: dict[str, Any]) -> dict:
        """Run a program in the guest, then record its completion on Var (the marker makes it run once).

        The lab guest has no Windows programs to run: it checks the program exists in the guest, where the
        release installed it, and logs the invocation on Var; on Hyper-V the same step runs it for real.
        """
        _, groot = self._running_guest(host, vm, "run_guest_command")
        var_dir, _ = self._disk(host, var_path, step="run_guest_command")
        done = var_dir.joinpath("content", *marker.split("/"))
        if done.exists():
            return {"changed": False}
        program = groot.joinpath(*guest_rel(command[0]))
        if not program.exists():
            raise ProviderError(f"{command[0]} is not installed in the guest", host=host, step="run_guest_command")
        log = var_dir / "content" / "imaging" / "guest-commands.log"
        previous = log.read_bytes() if log.exists() else b""
        atomic_write(log, previous + (json.dumps(command) + "\n").encode())
        write_json(done, record)
        return {"changed": True, "exit_code": 0}

    # --- observation helpers for status and tests ----------------------------------------------------
    def read_record(self, host: str, vm: str, var_path: str) -> dict[str, Any] | None:
        f = self.path(host, var_path) / "content" / "imaging" / "record.json"
        return read_json(f) if f.exists() else None

    # --- hotfixes on the running guest -----------------------------------------------------------------
    APPS_LINK = "C:\\Instrument\\Apps"
    VAR_LINK = "C:\\Instrument\\Var"

    def _guest_dir(self, host: str, vm: str, link: str, step: str) -> Path:
        p = self.guest_path(host, vm, link)
        if not p.exists():
            raise ProviderError(f"{link} does not exist in the guest {vm}", host=host, step=step)
        return p.resolve()

    def _hotfix_ledger(self, host: str, vm: str, ledger: str) -> tuple[Path, dict[str, Any]]:
        f = self.guest_path(host, vm, ledger)
        f = f.parent.resolve() / f.name if f.parent.exists() else f
        doc = read_json(f) if f.exists() else {"generations": {}}
        return f, doc

    def _do_apply_hotfix(self, host: str, vm: str, hotfix_id: str, package_path: str,
                         files: list[dict[str, str]], backup_rel: str, ledger: str, apps_generation: str,
                         entry: dict[str, Any], scripts: list[dict[str, str]]) -> dict:
        """Back up what each file replaces (once), put the new files in place by rename, verify, record."""
        self._running_guest(host, vm, "apply_hotfix")
        apps = self._guest_dir(host, vm, self.APPS_LINK, "apply_hotfix")
        var = self._guest_dir(host, vm, self.VAR_LINK, "apply_hotfix")
        ledger_file, doc = self._hotfix_ledger(host, vm, ledger)
        present = doc["generations"].get(apps_generation, {})
        current = {f["path"]: (sha256_file(apps / f["path"]) if (apps / f["path"]).is_file() else None)
                   for f in files}
        if hotfix_id in present and all(current[f["path"]] == f["sha256"] for f in files):
            return {"changed": False, "files": len(files)}
        package = self.path(host, package_path) / "content" / "files"
        backup = var.joinpath(*backup_rel.split("/"))
        listing = backup / "backup.json"
        if not listing.exists():  # the first attempt backs up; a re-run must not back up the new files
            saved = []
            for f in files:
                src = apps / f["path"]
                if src.is_symlink() or (src.exists() and not src.is_file()):
                    raise ProviderError(f"Apps\\{f['path']} is not a regular file; refusing to replace it",
                                        host=host, step="apply_hotfix")
                if src.is_file():
                    atomic_write(backup / "files" / f["path"], src.read_bytes())
                saved.append({"path": f["path"], "previous_sha256": current[f["path"]]})
            write_json(listing, {"hotfix": hotfix_id, "generation": apps_generation, "files": saved})
        self._hotfix_scripts(host, package.parent, var, hotfix_id, scripts, "pre")
        for f in files:
            src = package / f["path"]
            if not src.is_file() or sha256_file(src) != f["sha256"]:
                raise ProviderError(f"the staged package of {hotfix_id} lacks {f['path']} or it does not "
                                    "match its sha256; stage the hotfix again", host=host, step="apply_hotfix")
            atomic_write(apps / f["path"], src.read_bytes())
        problems = [f["path"] for f in files if sha256_file(apps / f["path"]) != f["sha256"]]
        if problems:
            raise ProviderError(f"after writing, {', '.join(problems)} do not match their sha256", host=host,
                                step="apply_hotfix")
        self._hotfix_scripts(host, package.parent, var, hotfix_id, scripts, "post")
        gens = doc["generations"].setdefault(apps_generation, {})
        gens[hotfix_id] = {**entry, "files": [{"path": f["path"], "sha256": f["sha256"],
                                                "previous_sha256": current[f["path"]]} for f in files],
                           "backup": backup_rel}
        write_json(ledger_file, doc)
        return {"changed": True, "files": len(files)}

    def _hotfix_scripts(self, host: str, package: Path, var: Path, hotfix_id: str,
                        scripts: list[dict[str, str]], phase: str) -> None:
        """The lab guest cannot run PowerShell: it checks the script is in the staged package and records, on
        Var, the script (and its sha256) a real guest runs at this point, as the hyperv template does."""
        for sc in scripts:
            if sc["phase"] != phase:
                continue
            src = package / sc["path"]
            if not src.is_file():
                raise ProviderError(f"the staged package of {hotfix_id} lacks its {phase} script {sc['path']}",
                                    host=host, step="apply_hotfix")
            log = var / "imaging" / "hotfix-scripts.json"
            doc = read_json(log) if log.exists() else {"runs": []}
            doc["runs"].append({"hotfix": hotfix_id, "phase": phase, "script": sc["path"],
                                "sha256": sha256_file(src), "when": datetime.now(UTC).isoformat(timespec="seconds")})
            write_json(log, doc)

    def _do_revert_hotfix(self, host: str, vm: str, hotfix_id: str, backup_rel: str, ledger: str,
                          apps_generation: str) -> dict:
        """Put back exactly the files the hotfix replaced and remove the ones it added."""
        self._running_guest(host, vm, "revert_hotfix")
        apps = self._guest_dir(host, vm, self.APPS_LINK, "revert_hotfix")
        var = self._guest_dir(host, vm, self.VAR_LINK, "revert_hotfix")
        ledger_file, doc = self._hotfix_ledger(host, vm, ledger)
        backup = var.joinpath(*backup_rel.split("/"))
        listing = backup / "backup.json"
        gens = doc["generations"].get(apps_generation, {})
        if not listing.exists():
            if hotfix_id in gens:
                raise ProviderError(f"the backup of {hotfix_id} ({backup_rel}) is missing; cannot revert",
                                    host=host, step="revert_hotfix")
            return {"changed": False}
        restored = []
        for f in read_json(listing)["files"]:
            target = apps / f["path"]
            if f["previous_sha256"] is None:
                if target.exists():
                    target.unlink()
                    parent = target.parent
                    while parent != apps and parent.is_dir() and not any(parent.iterdir()):
                        parent.rmdir()
                        parent = parent.parent
            else:
                saved = backup / "files" / f["path"]
                if sha256_file(saved) != f["previous_sha256"]:
                    raise ProviderError(f"the backup of {f['path']} does not match its recorded sha256",
                                        host=host, step="revert_hotfix")
                atomic_write(target, saved.read_bytes())
            restored.append(f["path"])
        if hotfix_id in gens:
            del gens[hotfix_id]
            write_json(ledger_file, doc)
        shutil.rmtree(backup)
        return {"changed": True, "files": restored}

    def _do_restart_services(self, host: str, vm: str, services: list[str]) -> dict:
        """The lab guest runs no services: record each restart in the guest's Var, as an event log would."""
        self._running_guest(host, vm, "restart_services")
        var = self._guest_dir(host, vm, self.VAR_LINK, "restart_services")
        log = var / "imaging" / "restarts.json"
        doc = read_json(log) if log.exists() else {"restarts": []}
        when = datetime.now(UTC).isoformat(timespec="seconds")
        doc["restarts"].extend({"service": s, "when": when} for s in services)
        write_json(log, doc)
        return {"changed": bool(services), "restarted": list(services)}

    def read_hotfix_ledger(self, host: str, vm: str, var_path: str) -> dict[str, Any]:
        f = self.path(host, var_path) / "content" / "imaging" / "hotfixes.json"
        return read_json(f) if f.exists() else {"generations": {}}
