"""The lab provider: carries out every step on a local folder that behaves like Hyper-V hosts and guests.

It enforces the rules Hyper-V enforces (no attach or detach on a running VM, a disk on one VM at most,
parents read-only and never modified) and the tool's own (Var and Data disks are never deleted or
recreated), so that a workflow that passes here is a workflow that respects them. Failures can be injected
per VM and action to rehearse what happens when a real host misbehaves.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path
from typing import Any

from imaging.core.errors import ProviderError, os_error
from imaging.core.files import atomic_write, read_json, remove_dead_temporaries, write_json
from imaging.model.steps import Step
from imaging.providers.base import StepHook
from imaging.providers.lab.disks import DiskActions
from imaging.providers.lab.doctor import DoctorActions
from imaging.providers.lab.existing import ExistingMachines
from imaging.providers.lab.fs import guest_rel, host_path
from imaging.providers.lab.guest import GuestActions
from imaging.providers.lab.host import HostActions
from imaging.providers.lab.hotfix import HotfixActions
from imaging.providers.lab.images import ImageActions
from imaging.providers.lab.settings import SettingsActions


def _first_copy_error(exc: shutil.Error) -> OSError:
    """shutil.copytree gathers (source, destination, reason) per file; the reason is text, so the errno is
    read back from it."""
    first = exc.args[0][0] if exc.args and isinstance(exc.args[0], list) and exc.args[0] else None
    if not first:
        return OSError(str(exc))
    why = str(first[2])
    for code in (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT):
        if os.strerror(code) in why:
            return OSError(code, os.strerror(code), first[1])
    return OSError(why)


class LabProvider(HostActions, DiskActions, GuestActions, ImageActions, HotfixActions, ExistingMachines,
                  DoctorActions, SettingsActions):
    """Steps carried out on ``lab`` (a folder). Thread-safe: a host's VM and disk records change under that
    host's lock, so instruments on different hosts proceed in parallel, as on real hosts."""

    name = "lab"
    sample_images = True

    def __init__(self, lab: Path, *, fault: StepHook | None = None) -> None:
        self.lab = Path(lab)
        self.lab.mkdir(parents=True, exist_ok=True)
        self.fault = fault
        self._locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()
        self._unpacking: dict[str, threading.Lock] = {}  # sha256 -> held while that image is read
        self._purger: threading.Thread | None = None
        self._purge_again = False
        if (self.lab / ".trash").exists():
            self._start_purge()

    def install_hosts(self, hosts: list[Any]) -> None:
        """A lab host is installed once, the first time the lab sees it: its storage root and its image
        share exist, as on a real host prepared by docs/hyperv.md. Later the lab never recreates them, so
        a host broken by hand stays broken for `invoke doctor` to find."""
        for h in hosts:
            marker = self.lab / "hosts" / h.name / "installed.json"
            if marker.exists():
                continue
            self.path(h.name, h.storage_root).mkdir(parents=True, exist_ok=True)
            self.path(h.name, h.share).mkdir(parents=True, exist_ok=True)
            write_json(marker, {"host": h.name, "storage_root": h.storage_root, "share": h.share})

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
        remove_dead_temporaries(f.parent)  # what a process killed while writing a VM's settings left
        return read_json(f)

    def _disk(self, host: str, winpath: str, *, step: str) -> tuple[Path, dict[str, Any]]:
        d = self.path(host, winpath)
        meta = d / "disk.json"
        if not meta.exists():
            raise ProviderError(f"disk {winpath} does not exist", host=host, step=step)
        remove_dead_temporaries(d)  # what a process killed while writing the disk's metadata left
        return d, read_json(meta)

    def _offline_disk(self, host: str, path: str, step: str) -> Path:
        """A disk mounted on the host (read or changed): only while no running VM uses it, as Hyper-V's
        Mount-VHD refuses a disk a running VM holds."""
        d, meta = self._disk(host, path, step=step)
        if meta.get("attached_to") and self._vm_power(host, meta["attached_to"]) != "Off":
            raise ProviderError(f"{path} belongs to the running VM {meta['attached_to']}; it is used only while its "
                                "VM is off", host=host, step=step)
        return d

    def _vm_power(self, host: str, vm: str) -> str:
        f = self._vm_file(host, vm)
        return read_json(f)["power"] if f.exists() else "Absent"

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
        after = self.fault(step) if self.fault is not None else None
        handler = getattr(self, f"_do_{step.action}", None)
        if handler is None:
            raise ProviderError(f"the lab cannot carry out {step.action}", host=step.host, step=step.action)
        with self._locks_guard:
            lock = self._locks.setdefault(step.host, threading.RLock())
        with lock:
            try:
                result = handler(step.host, **step.inputs)
            except shutil.Error as exc:  # a tree copy: the first file that failed says why
                raise ProviderError(str(os_error(_first_copy_error(exc), self._place(step))), host=step.host,
                                    step=step.action) from exc
            except OSError as exc:  # as a host script reports a full or read-only disk: where, and the fix
                raise ProviderError(str(os_error(exc, self._place(step))), host=step.host, step=step.action) \
                    from exc
        if after is not None:
            after()
        return result

    def _place(self, step: Step) -> str | None:
        """The local folder of the first Windows path a step names: where an error without a path happened."""
        for key, value in step.inputs.items():
            if isinstance(value, str) and len(value) > 2 and value[1:3] == ":\\" and key != "link":
                return str(self.path(step.host, value))
        return None

    # --- questions answered without a step (the provider interface) -----------------------------------
    def share_folder(self, host: str, share_path: str) -> Path | None:
        return self.path(host, share_path).parent

    def trust(self, host: str) -> str | None:
        return None  # a local folder: no connection to trust

    def staged(self, host: str, image_path: str, sha256: str) -> bool | None:
        return self._verified(self.path(host, image_path), sha256)
