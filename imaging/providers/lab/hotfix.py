"""The lab's hotfix actions on the running guest, each beside its undo: apply, revert, stop and start
services, and the ledger on Var.

The lab guest runs the services a real instrument PC runs from its Apps volume (``LAB_SERVICES``): while
one runs, its program files are loaded and cannot be replaced, as Windows refuses to replace a running EXE
or a loaded DLL. Their state is the guest's own (``SERVICES_FILE``, beside the registry hives it stands in for).

Mixed into ``LabProvider``."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from imaging.core.errors import ProviderError
from imaging.core.files import atomic_write, read_json, write_json
from imaging.core.hashing import sha256_file

# The lab guest's services: the Apps folders whose program files each one loads while it runs.
LAB_SERVICES: dict[str, tuple[str, ...]] = {
    "InstrumentServer": ("server/bin", "server/lib", "server/db"),
    "InstrumentClient": ("client/bin", "client/plugins"),
    "MySQL": ("MySQL/bin",),
}
LOADED_SUFFIXES = (".exe", ".dll", ".bin")  # what a process maps into memory (a .cfg is only read)
SERVICES_FILE = "C:\\Windows\\System32\\config\\lab-guest\\services.json"  # the service manager's state


class HotfixActions:
    """The lab's hotfix actions on the running guest, each beside its undo: apply, revert, stop and start
    services."""

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
        self._refuse_loaded(host, vm, [f["path"] for f in files if current[f["path"]] != f["sha256"]],
                            "apply_hotfix")
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
        saved_files = read_json(listing)["files"]
        self._refuse_loaded(host, vm, [f["path"] for f in saved_files], "revert_hotfix")
        restored = []
        for f in saved_files:
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

    def _services(self, host: str, vm: str) -> tuple[Path, dict[str, Any]]:
        f = self.guest_path(host, vm, SERVICES_FILE)
        return f, (read_json(f) if f.exists() else {"stopped": [], "events": []})

    def _set_services(self, host: str, vm: str, services: list[str], *, run: bool, step: str) -> dict:
        """Stop or start services of the guest, as Stop-Service / Start-Service do (one already in that state:
        nothing to do); an unknown name is refused as Get-Service refuses it."""
        self._running_guest(host, vm, step)
        f, doc = self._services(host, vm)
        unknown = [s for s in services if s not in LAB_SERVICES]
        if unknown:
            raise ProviderError(f"Cannot find any service with service name '{unknown[0]}' in the guest {vm}",
                                host=host, step=step)
        stopped = set(doc["stopped"])
        changed = [s for s in services if (s in stopped) == run]
        stopped = stopped - set(services) if run else stopped | set(services)
        when = datetime.now(UTC).isoformat(timespec="seconds")
        doc = {"stopped": sorted(stopped), "events": [*doc["events"], *({"service": s, "to": "running" if run
                                                                          else "stopped", "when": when}
                                                                         for s in changed)]}
        write_json(f, doc)
        return {"changed": bool(changed), "started" if run else "stopped": changed}

    def _do_stop_services(self, host: str, vm: str, services: list[str]) -> dict:
        return self._set_services(host, vm, services, run=False, step="stop_services")

    def _do_start_services(self, host: str, vm: str, services: list[str]) -> dict:
        return self._set_services(host, vm, services, run=True, step="start_services")

    def _refuse_loaded(self, host: str, vm: str, paths: list[str], step: str) -> None:
        """A file a running service has loaded cannot be replaced: refused before anything changes, naming
        the service, so the package can name it under ``restart`` (stopped first, started after)."""
        _, doc = self._services(host, vm)
        stopped = set(doc["stopped"])
        busy = [f"{p} (loaded by {name})" for p in paths for name, folders in LAB_SERVICES.items()
                if name not in stopped and p.lower().endswith(LOADED_SUFFIXES)
                and any(p.startswith(folder + "/") for folder in folders)]
        if busy:
            raise ProviderError(f"{', '.join(busy)}: a running program's file cannot be replaced; nothing was "
                                "changed. Name its service under 'restart' in hotfix.yaml: it is stopped before "
                                "the files are replaced and started after", host=host, step=step)

    def read_hotfix_ledger(self, host: str, vm: str, var_path: str) -> dict[str, Any]:
        f = self.path(host, var_path) / "content" / "imaging" / "hotfixes.json"
        return read_json(f) if f.exists() else {"generations": {}}
