"""The lab's answer to ``doctor_host``: the same checks a real host runs (docs/hyperv.md, "invoke doctor"),
against the lab's own state. A lab host has no WinRM endpoint, module or quotas to check: those checks
say so and pass; its storage root, its share and its VMs are checked for real.

Mixed into ``LabProvider``."""

from __future__ import annotations

import shutil
from typing import Any


class DoctorActions:
    def _do_doctor_host(self, host: str, storage_root: str, share: str, need_bytes: int, max_concurrent: int,
                        vms: list[str]) -> dict:
        checks: list[dict[str, Any]] = [
            {"name": "endpoint", "ok": True, "detail": "a lab host: a local folder, no WinRM endpoint or TLS"},
            {"name": "hyper-v module", "ok": True, "detail": "a lab host: the lab stands in for Hyper-V"},
            {"name": "winrm quotas", "ok": True, "detail": "a lab host: no WinRM shells"},
        ]
        root = self.path(host, storage_root)
        if not root.is_dir():
            checks.append({"name": "storage root", "ok": False, "detail": f"{storage_root} does not exist",
                           "fix": f"create {storage_root} on {host} (or correct storage_root in hosts.yaml)"})
        else:
            free = shutil.disk_usage(root).free
            ok = free >= need_bytes
            checks.append({"name": "storage root", "ok": ok,
                           "detail": f"{storage_root}: {free / 1024 ** 3:.1f} GB free, {need_bytes / 1024 ** 3:.1f} GB "
                                     "needed for the desired releases' images and the reserve",
                           **({} if ok else {"fix": f"free space on {storage_root} or lower reserve_gb"})})
        shared = self.path(host, share)
        checks.append({"name": "image share", "ok": shared.is_dir(),
                       "detail": f"{share} {'is' if shared.is_dir() else 'is not'} reachable from {host}",
                       **({} if shared.is_dir() else {"fix": f"create the share {share} (the lab's image share)"})})
        return {"changed": False, "checks": checks, "vms": {vm: self._vm_power(host, vm) for vm in vms}}
