"""The ``hyperv`` provider: each step becomes one PowerShell script run on its host over remoting.

The provider renders the step (``imaging.providers.hyperv.scripts``), runs it through the transport's session pool on
the step's host (sessions reused per host, retries only for transient failures, the result read by
``results.parse_result``, the one parser), and turns every way that can go wrong (the script
failed, printed no result, printed a broken one, the host did not answer in time) into one
``ProviderError`` naming host and step. Actions that mount disks or change drive letters on the host run
under the pool's per-host mount lock, because those operations race each other on one host. The guest
credential travels as pipeline parameters wrapped in ``transport.Secret``, never in the script text.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path, PureWindowsPath
from typing import Any, Protocol

from imaging.core.errors import ImagingError, InputError, LockHeld, ProviderError
from imaging.core.redaction import redact
from imaging.model.steps import Step
from imaging.providers.hyperv.credentials import DomainJoinCredential, GuestCredential, Secret
from imaging.providers.hyperv.scripts import GUEST_ACTIONS, render_script
from imaging.providers.hyperv.session import SessionPool

log = logging.getLogger(__name__)

# Actions that mount a VHDX on the host (Mount-VHD, access paths, Initialize-Disk/Format-Volume).
MOUNT_ACTIONS = frozenset({"create_disk", "backup_volume", "rescue_user_files", "write_settings", "read_volume",
                           "inject_first_boot", "survey_vm", "copy_from_disk", "move_aside", "remove_disk_links",
                           "undo_copy",
                           "write_volume_files", "build_apps_disk", "build_template"})

# Whole-step time limits in seconds. Copies and backups of large disks get hours; quick Hyper-V calls get
# minutes. stop_vm and wait_guest get their own timeout_s input plus a margin.
DEFAULT_TIMEOUTS: dict[str, float] = {
    "preflight": 120, "acquire_lock": 60, "release_lock": 60, "ensure_vm": 300, "get_state": 60,
    "check_state": 60, "doctor_host": 120, "read_host_files": 60, "set_host_note": 60,
    "survey_vm": 1800, "rename_vm": 120, "remove_vm": 120, "move_aside": 600,
    "remove_disk_links": 600, "undo_copy": 3600, "read_guest_files": 300, "remove_volume_links": 300,
    "copy_from_disk": 6 * 3600,
    "stop_vm": 120, "start_vm": 300, "wait_guest": 60, "stage_artifact": 6 * 3600,
    "create_child_disk": 300, "create_disk": 900, "delete_disk": 300, "remove_partial": 300, "attach_disk": 120,
    "detach_disk": 120, "inject_first_boot": 600, "backup_volume": 4 * 3600, "rescue_user_files": 2 * 3600,
    "write_settings": 900,
    "apply_hotfix": 1800, "revert_hotfix": 1800, "stop_services": 300, "start_services": 300,
    "apply_settings": 900, "restore_settings": 900,
    "configure_guest": 600, "health_check": 600, "write_record": 300, "restore_record": 300, "read_volume": 600,
    "write_volume_files": 900, "run_guest_command": 3600,
    "build_apps_disk": 6 * 3600, "remove_image": 600, "build_template": 600, "export_image": 6 * 3600,
}
_TIMEOUT_FROM_INPUT = ("stop_vm", "wait_guest", "build_template")


class ScriptResultLike(Protocol):
    """What the provider reads from ``imaging.providers.hyperv.transport.ScriptResult``: the parsed, framed result."""

    data: dict[str, Any]


class SessionPoolLike(Protocol):
    """What the provider needs from ``imaging.providers.hyperv.transport.SessionPool``.

    ``run_script`` parses the script's output with ``parse_result`` (the one parser) and
    raises ProviderError for a script error, missing or malformed output, or a timeout.
    """

    def run_script(self, host: str, script: str, *, step: str, timeout_s: float,
                   parameters: Mapping[str, Any] | None = None) -> ScriptResultLike: ...

    def mount_lock(self, host: str) -> AbstractContextManager[Any]: ...


# How Hyper-V says a file is held by another process: the cmdlets' error id, the category, the Win32
# sharing violation (0x80070020) and its message.
_IN_USE_IDS = ("ObjectInUse",)
_IN_USE_HRESULTS = (-2147024864,)


def in_use(result: Mapping[str, Any]) -> bool:
    """Whether a failed script's frame says a file it needed was held by another process."""
    if result.get("ok", True):
        return False
    error_id, category = str(result.get("error_id") or ""), str(result.get("category") or "")
    return (any(i in error_id for i in _IN_USE_IDS) or category == "ResourceBusy"
            or result.get("hresult") in _IN_USE_HRESULTS
            or "being used by another process" in str(result.get("error") or ""))


class HypervProvider:
    """Carries out steps on Hyper-V hosts through a session pool (``SessionPool``)."""

    name = "hyperv"
    sample_images = False

    def __init__(self, pool: SessionPoolLike, *, guest_credential: GuestCredential | None = None,
                 guest_credential_source: Callable[[], GuestCredential] | None = None,
                 timeouts: Mapping[str, float] | None = None) -> None:
        self.pool = pool
        self.guest_credential = guest_credential
        # Asked once, the first time a guest step runs (so a plan that never enters the guest never asks).
        self._guest_source = guest_credential_source
        self._guest_lock = threading.Lock()
        self.timeouts = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
        self.shares: dict[str, tuple[str, str | None]] = {}  # host -> (UNC share, where it is mounted here)
        # A disk file another process holds (ObjectInUse): tries, and the first wait (doubled each time).
        self.in_use_attempts, self.in_use_backoff_s = 5, 2.0

    @classmethod
    def from_inventory(cls, inventory: Any, *, connection_overrides: Mapping[str, Any] | None = None,
                       timeouts: Mapping[str, float] | None = None, **pool_options: Any) -> HypervProvider:
        """The provider for every hyperv host of an inventory, with reused sessions from the transport.

        Host credentials are resolved per host by the pool (IMAGING_HYPERV_<HOST>_USER/_PASSWORD, then
        IMAGING_HYPERV_USER/_PASSWORD, else a prompt); the guest credential comes from IMAGING_GUEST_USER /
        IMAGING_GUEST_PASSWORD, else a prompt the first time a guest step runs. Nothing is read from the
        inventory but addresses and connection settings.
        """
        pool = SessionPool.from_inventory(inventory, connection_overrides=connection_overrides, **pool_options)
        provider = cls(pool, guest_credential=GuestCredential.from_env(),
                       guest_credential_source=GuestCredential.resolve, timeouts=timeouts)
        provider.shares = {h.name: (h.share, h.share_mount) for h in inventory.hosts.values()}
        return provider

    def share_folder(self, host: str, share_path: str) -> Path | None:
        """The folder of ``share_path`` under the host's ``share_mount`` (the SMB share mounted here), if set."""
        share, mount = self.shares.get(host, (None, None))
        if not share or not mount:
            return None
        inside = PureWindowsPath(share_path)
        root = PureWindowsPath(share)
        if inside.parts[:len(root.parts)] != root.parts:
            return None
        return Path(mount).joinpath(*inside.parts[len(root.parts):]).parent

    def staged(self, host: str, image_path: str, sha256: str) -> bool | None:
        return None  # only a script on the host can tell (stage_artifact checks before it copies)

    def trust(self, host: str) -> str | None:
        connection = getattr(self.pool, "connection", None)
        return connection(host).trust()[1] if callable(connection) else None

    def close(self) -> None:
        """Close the pool's sessions (they count against the host's per-user shell quota)."""
        close = getattr(self.pool, "close", None)
        if callable(close):
            close()

    def timeout_for(self, step: Step) -> float:
        """The whole-step limit: the action's own, plus the step's timeout_s where it waits by design."""
        limit = float(self.timeouts[step.action])
        if step.action in _TIMEOUT_FROM_INPUT:
            limit += float(step.inputs["timeout_s"])
        return limit

    @contextlib.contextmanager
    def _lock_for(self, step: Step) -> Iterator[None]:
        if step.action in MOUNT_ACTIONS:
            with self.pool.mount_lock(step.host):
                yield
        else:
            yield

    def _guest(self, step: Step) -> GuestCredential:
        with self._guest_lock:
            if self.guest_credential is None and self._guest_source is not None:
                try:
                    self.guest_credential = self._guest_source()
                except InputError as exc:
                    raise ProviderError(f"this step runs inside the guest and needs its credential: {exc}",
                                        host=step.host, step=step.action) from None
            if self.guest_credential is None:
                raise ProviderError("this step runs inside the guest and needs its credential: set "
                                    "IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD", host=step.host,
                                    step=step.action)
            return self.guest_credential

    def _parameters(self, step: Step) -> dict[str, Any] | None:
        """Pipeline parameters bound to the script's param() block: the guest credential, never rendered."""
        if step.action not in GUEST_ACTIONS:
            return None
        cred = self._guest(step)
        params: dict[str, Any] = {"GuestUser": cred.user, "GuestPassword": Secret(cred.password)}
        if "@@JOIN_PASSWORD@@" in str(step.inputs.get("answer", "")):  # a first boot that joins the domain
            try:
                join = DomainJoinCredential.resolve()
            except InputError as exc:
                raise ProviderError(f"the new guest joins the domain at its first boot: {exc}", host=step.host,
                                    step=step.action) from None
            params |= {"JoinUser": join.user, "JoinPassword": Secret(join.password)}
        return params

    def run(self, step: Step) -> dict[str, Any]:
        """Run one step on its host and return the script's result (always with ``changed``).

        A step that failed, having changed nothing, because another process held its disk file (Hyper-V's
        ObjectInUse: a backup agent, a virus scanner, Hyper-V's own merge of a checkpoint) is run again after
        a backoff: every action is idempotent. One that is still held after the last try is reported so."""
        waited = 0.0
        for attempt in range(1, self.in_use_attempts + 1):
            try:
                return self._run_once(step)
            except ProviderError as exc:
                data = getattr(exc, "result", None) or {}
                if not in_use(data) or data.get("changed") or attempt == self.in_use_attempts:
                    if in_use(data) and attempt > 1:
                        said = redact(str(data.get("error") or exc))
                        raise ProviderError(f"{said}; the file was still in use by another process after {attempt} "
                                            f"tries over {waited:.0f} s: find what holds it (a backup agent, a "
                                            "virus scanner, Hyper-V Manager's Inspect Disk, a checkpoint merge) "
                                            "and run the command again", host=step.host, step=step.action) from exc
                    raise
                delay = min(self.in_use_backoff_s * 2 ** (attempt - 1), 30.0)
                log.warning("host %s step %s: a file is in use by another process; trying again in %.1f s "
                            "(attempt %d of %d)", step.host, step.action, delay, attempt, self.in_use_attempts)
                time.sleep(delay)
                waited += delay
        raise AssertionError("unreachable")

    def _run_once(self, step: Step) -> dict[str, Any]:
        host, action = step.host, step.action
        script = render_script(action, step.inputs)
        parameters = self._parameters(step)
        timeout_s = self.timeout_for(step)
        try:
            with self._lock_for(step):
                result = self.pool.run_script(host, script, step=action, timeout_s=timeout_s,
                                              parameters=parameters)
        except ProviderError as exc:
            if exc.host and exc.step:
                raise
            raise ProviderError(redact(str(exc)), host=host, step=action,
                                transient=exc.transient) from exc
        except TimeoutError as exc:
            raise ProviderError(f"no result within {timeout_s:g} s ({exc or 'timed out'})", host=host,
                                step=action, transient=True) from exc
        except (ConnectionError, OSError) as exc:
            raise ProviderError(redact(f"lost the connection to the host: {exc}"), host=host, step=action,
                                transient=True) from exc
        except ImagingError:
            raise
        except Exception as exc:  # the transport's own failures, whatever their type
            raise ProviderError(redact(f"the transport failed: {type(exc).__name__}: {exc}"), host=host,
                                step=action) from exc
        data = result.data
        if not isinstance(data, dict) or not isinstance(data.get("changed"), bool):
            raise ProviderError("the script's result lacks a boolean 'changed'", host=host, step=action)
        if data.get("ok", True) is not True:
            message = redact(str(data.get("error") or "the script reported failure without a message"))
            if "held_by" in data:
                raise LockHeld(f"host {host} step {action}: {message}; wait for it, or finish it with "
                               "`invoke resume --instrument=...` or `invoke rollback --instrument=...`")
            where = redact(str(data.get("where") or "")).strip().splitlines()
            detail = f" ({where[0].strip()})" if where else ""
            error = ProviderError(f"{message}{detail}", host=host, step=action)
            error.result = data  # type: ignore[attr-defined]  # says whether the step changed anything first
            raise error
        return data
