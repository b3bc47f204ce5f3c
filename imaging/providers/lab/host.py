"""The lab's host-level actions: preflight, the host lock, VMs and their power, staging images.

Mixed into ``LabProvider``, which holds the paths and the per-host locks these use."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import tarfile
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imaging.core.errors import LockHeld, ProviderError
from imaging.core.files import read_json, write_json
from imaging.core.hashing import sha256_file
from imaging.images.vhdx import read_image_files
from imaging.providers.lab.fs import clone_tree


class _Flock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> None:
        self.fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _power_changed(rec: dict[str, Any], power: str) -> None:
    """Every power change of a lab VM is kept in its record (as Hyper-V's event log keeps them), so a test can
    prove what did or did not stop an instrument."""
    rec.setdefault("power_history", []).append({"power": power, "when": datetime.now(UTC).isoformat()})


class HostActions:
    """The lab's host-level actions: preflight, the host lock, VMs and their power, staging images."""

    # --- host-level actions --------------------------------------------------------------------------
    def _do_preflight(self, host: str, vm: str, artifacts: list[dict[str, Any]], need_bytes: int) -> dict:
        hroot = self.lab / "hosts" / host
        hroot.mkdir(parents=True, exist_ok=True)
        missing = []
        for art in artifacts:
            d = self.path(host, art["path"])
            if not self._verified(d, art["sha256"]):
                missing.append(art["name"])
        storage = self.path(host, artifacts[0]["path"]).parent if artifacts else hroot
        while not storage.exists():  # the images folder of a host that never staged anything
            storage = storage.parent
        free = shutil.disk_usage(storage).free
        if free < need_bytes:
            raise ProviderError(f"not enough space on the host's storage ({storage}): {free // 2**20} MiB free, "
                                f"{need_bytes // 2**20} MiB needed. Fix: free space there (`invoke prune` removes "
                                "images no release needs) and run the command again", host=host, step="preflight")
        if missing:
            raise ProviderError(f"artifacts not staged (or no longer intact) on the host: {', '.join(missing)}; run "
                                "`invoke stage` for this release first", host=host, step="preflight")
        return {"changed": False, "host_ok": True, "vm_exists": self._vm_file(host, vm).exists(),
                "free_bytes": free, "missing": missing}

    def _do_acquire_lock(self, host: str, vm: str, lock_path: str, op_id: str, owner: str) -> dict:
        """The lock file appears whole or not at all: its content is written under a name of this operation's
        own and linked into place (a link fails when the lock exists), so a kill never leaves an empty lock."""
        f = self.path(host, lock_path)
        f.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps({"op_id": op_id, "owner": owner, "since": datetime.now(UTC).isoformat()}).encode()
        mine = f.with_name(f"{f.name}.{op_id}.partial")
        try:
            mine.write_bytes(body)
            os.link(mine, f)
        except FileExistsError:
            held = json.loads(f.read_bytes() or b"{}")
            if held.get("op_id") == op_id:
                return {"changed": False}
            raise LockHeld(f"{vm} is locked by operation {held.get('op_id')} of {held.get('owner')} since "
                           f"{held.get('since')}; wait for it, or finish it with `invoke resume --instrument=...` "
                           "or `invoke rollback --instrument=...`") from None
        finally:
            mine.unlink(missing_ok=True)
        return {"changed": True}

    def _do_read_host_files(self, host: str, paths: list[str], max_bytes: int) -> dict:
        """Small files on the host, read only; a path that does not exist is left out."""
        found: dict[str, str] = {}
        total = 0
        for winpath in paths:
            f = self.path(host, winpath)
            if f.is_file():
                data = f.read_bytes()
                total += len(data)
                if total > max_bytes:
                    raise ProviderError(f"{winpath} is larger than a note: more than {max_bytes} bytes", host=host,
                                        step="read_host_files")
                found[winpath] = base64.b64encode(data).decode("ascii")
        return {"changed": False, "found": found}

    def _do_set_host_note(self, host: str, path: str, note: dict[str, Any] | None) -> dict:
        """Write a note on the host whole (atomically), or remove it (note None). Already so: nothing to do."""
        f = self.path(host, path)
        if note is None:
            if not f.exists():
                return {"changed": False}
            f.unlink()
            return {"changed": True}
        if f.exists() and read_json(f) == note:
            return {"changed": False}
        write_json(f, note)
        return {"changed": True}

    def _do_release_lock(self, host: str, vm: str, lock_path: str, op_id: str) -> dict:
        f = self.path(host, lock_path)
        f.with_name(f"{f.name}.{op_id}.partial").unlink(missing_ok=True)  # left by a kill inside acquire_lock
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

    def _do_check_state(self, host: str, vm: str, exists: bool, power: str, disks: dict[str, str]) -> dict:
        """Observe under the lock: stop before any change when the VM is not what the plan was made from."""
        now = self._do_get_state(host, vm)
        have = {str(d["slot"]): d["path"] for d in now["disks"]}
        changes = []
        if now["exists"] != exists:
            changes.append(f"the VM exists: {now['exists']}, planned on {exists}")
        if now["power"] != power:
            changes.append(f"power is {now['power']}, planned on {power}")
        for slot in sorted(set(have) | set(disks), key=int):
            if have.get(slot) != disks.get(slot):
                changes.append(f"SCSI 0:{slot} holds {have.get(slot) or 'nothing'}, planned on "
                               f"{disks.get(slot) or 'nothing'}")
        if changes:
            raise ProviderError(f"{vm} changed since this plan was made (another operation ran meanwhile): "
                                + "; ".join(changes) + "; nothing was changed: look at `invoke status` and plan again",
                                host=host, step="check_state")
        return {"changed": False, "power": now["power"]}

    def _do_stop_vm(self, host: str, vm: str, timeout_s: int) -> dict:
        rec = self._vm(host, vm, step="stop_vm")
        if rec["power"] == "Off":
            return {"changed": False, "forced": False}
        rec["power"] = "Off"
        _power_changed(rec, "Off")
        write_json(self._vm_file(host, vm), rec)
        return {"changed": True, "forced": False}

    def _do_start_vm(self, host: str, vm: str) -> dict:
        rec = self._vm(host, vm, step="start_vm")
        if rec["power"] == "Running":
            return {"changed": False}
        if "0" not in rec["slots"]:
            raise ProviderError(f"VM {vm} has no OS disk in slot 0", host=host, step="start_vm")
        rec["power"] = "Running"
        _power_changed(rec, "Running")
        write_json(self._vm_file(host, vm), rec)
        self.first_boot(host, vm)
        return {"changed": True}

    def _do_wait_guest(self, host: str, vm: str, timeout_s: int, computer_name: str | None = None) -> dict:
        """The guest answers once Windows setup has finished; one whose setup stopped (an answer file it could
        not use) never answers, and one that took another name than its answer file gave is refused."""
        rec = self._vm(host, vm, step="wait_guest")
        if rec["power"] != "Running":
            raise ProviderError(f"guest {vm} does not answer: the VM is {rec['power']}", host=host, step="wait_guest")
        stopped, identity = self.setup_state(host, vm)
        if stopped:
            raise ProviderError(f"guest {vm} did not answer within {timeout_s} s: Windows setup stopped ({stopped})",
                                host=host, step="wait_guest")
        name = identity.get("computer_name") if identity else None
        if computer_name and name and name.upper() != computer_name.upper():
            raise ProviderError(f"guest {vm} answers as {name}, not {computer_name}", host=host, step="wait_guest")
        return {"changed": False, **({"guest_name": name} if name else {})}

    def _unpacked(self, image: Path, sha256: str) -> Path:
        """The files of the volume inside a staged image, read once per sha256 for the whole lab and kept:
        every host's staged copy is a hard-link clone of them (the lab's hosts share one disk)."""
        cache = self.lab / "unpacked" / sha256
        with self._locks_guard:
            lock = self._unpacking.setdefault(sha256, threading.Lock())
        with lock:  # two hosts of this process staging one image read it once
            return self._unpack_once(image, cache)

    def _unpack_once(self, image: Path, cache: Path) -> Path:
        if (cache / "content").is_dir():
            return cache / "content"
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{cache.name[:12]}-", dir=cache.parent))
        try:
            read_image_files(image, partial / "content", workdir=partial)
            try:
                os.rename(partial, cache)  # atomic; refused when another process got there first
            except OSError:
                if not (cache / "content").is_dir():
                    raise
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return cache / "content"

    def _do_stage_artifact(self, host: str, name: str, sha256: str, share_path: str, dest_path: str) -> dict:
        """Pull an image from the share like a host does: copy, verify sha256, mark read-only. The guest's
        view of a VHDX comes from reading the volume inside the staged image once, here (children are then
        hard-link clones of it); a hotfix package (a tar) is unpacked the same way."""
        dest = self.path(host, dest_path)
        with self._exclusive(host, dest.name):  # one stager per host and image, across processes
            return self._stage_locked(host, name, sha256, share_path, dest_path, dest)

    def _exclusive(self, host: str, what: str) -> Any:
        """A crash-safe lock (flock, released by the kernel when a process dies) on one thing of one host."""
        folder = self.lab / "locks" / host
        folder.mkdir(parents=True, exist_ok=True)
        return _Flock(folder / f"{what}.lock")

    def _verified(self, staged: Path, sha256: str) -> bool:
        """Staged means verified complete: the marker names this sha256, and the image file still has the size
        and modification time it had when it was verified (else it is hashed again, as Get-FileHash would)."""
        meta = staged / "disk.json"
        if not meta.exists():
            return False
        m = read_json(meta)
        if m.get("sha256") != sha256:
            return False
        image = staged / m["image"] if m.get("image") else None
        if image is None:
            return True  # an unpacked package: its content is what was verified
        if not image.is_file():
            return False
        st = image.stat()
        if [st.st_size, st.st_mtime_ns] == m.get("verified"):
            return True
        return sha256_file(image) == sha256

    def _stage_locked(self, host: str, name: str, sha256: str, share_path: str, dest_path: str, dest: Path) -> dict:
        if self._verified(dest, sha256):
            return {"changed": False, "bytes": 0, "unpacked": False}
        src = self.path(host, share_path)
        if not src.exists():
            raise ProviderError(f"{share_path} is not on the share; publish the release first "
                                "(`invoke publish`)", host=host, step="stage_artifact")
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)
        partial.mkdir()
        try:
            is_vhdx = share_path.lower().endswith(".vhdx")
            blob = partial / ("image.vhdx" if is_vhdx else "image.tar")
            shutil.copyfile(src, blob)
            actual = sha256_file(blob)
            if actual != sha256:
                raise ProviderError(f"{name}: sha256 on arrival is {actual}, expected {sha256}; the share copy is "
                                    "corrupt, publish it again", host=host, step="stage_artifact")
            if is_vhdx:
                blob.chmod(0o444)
                clone_tree(self._unpacked(blob, sha256), partial / "content")
            else:
                (partial / "content").mkdir()
                with tarfile.open(blob) as tar:
                    tar.extractall(partial / "content", filter="data")
                blob.unlink()
            st = blob.stat() if is_vhdx else None
            write_json(partial / "disk.json", {"role": "template", "label": None, "parent": None, "read_only": True,
                                               "size_gb": 0, "attached_to": None, "sha256": sha256, "name": name,
                                               "image": blob.name if is_vhdx else None,
                                               "verified": [st.st_size, st.st_mtime_ns] if st else None})
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(partial, dest)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return {"changed": True, "bytes": src.stat().st_size, "unpacked": True}
