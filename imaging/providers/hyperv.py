"""The ``hyperv`` provider: each step becomes one PowerShell script run on its host over remoting.

The provider renders the step (``imaging.powershell``), runs it through the transport's session pool on
the step's host, and turns every way that can go wrong (the script failed, printed no result, printed a
broken one, the host did not answer in time) into one ``ProviderError`` naming host and step. Actions that
mount disks or change drive letters on the host run under the pool's per-host mount lock, because those
operations race each other on one host.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ImagingError, LockHeld, ProviderError
from ..powershell import GUEST_ACTIONS, RESULT_BEGIN, RESULT_END, render_script
from ..steps import Step

# Actions that mount a VHDX on the host (Mount-VHD, access paths, Initialize-Disk/Format-Volume).
MOUNT_ACTIONS = frozenset({"create_disk", "backup_volume", "rescue_user_files", "write_settings", "read_volume",
                           "write_volume_files"})

# Whole-step time limits in seconds. Copies and backups of large disks get hours; quick Hyper-V calls get
# minutes. stop_vm and wait_guest get their own timeout_s input plus a margin.
DEFAULT_TIMEOUTS: dict[str, float] = {
    "preflight": 120, "acquire_lock": 60, "release_lock": 60, "ensure_vm": 300, "get_state": 60,
    "stop_vm": 120, "start_vm": 300, "wait_guest": 60, "stage_artifact": 6 * 3600,
    "create_child_disk": 300, "create_disk": 900, "delete_disk": 300, "attach_disk": 120,
    "detach_disk": 120, "backup_volume": 4 * 3600, "rescue_user_files": 2 * 3600, "write_settings": 900,
    "configure_guest": 600, "health_check": 600, "write_record": 300, "read_volume": 600,
    "write_volume_files": 900, "run_guest_command": 3600,
}
_TIMEOUT_FROM_INPUT = ("stop_vm", "wait_guest")


class ScriptResultLike(Protocol):
    output: list[str]


class SessionPoolLike(Protocol):
    """What the provider needs from ``imaging.transport.SessionPool``."""

    def run_script(self, host: str, script: str, *, step: str, timeout_s: float,
                   parameters: Mapping[str, Any] | None = None) -> ScriptResultLike: ...

    def mount_lock(self, host: str) -> AbstractContextManager[Any]: ...


ResultParser = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class GuestCredential:
    """The guest account used over PowerShell Direct; passed as script parameters, never rendered."""

    user: str
    password: str = field(repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GuestCredential | None:
        env = os.environ if environ is None else environ
        user, password = env.get("IMAGING_GUEST_USER"), env.get("IMAGING_GUEST_PASSWORD")
        return cls(user, password) if user and password is not None else None


def read_result(output: Sequence[str], *, host: str, step: str) -> dict[str, Any]:
    """The JSON object a step script printed between ``RESULT_BEGIN`` and ``RESULT_END``.

    Exactly one framed result must be present and it must be an object with a boolean ``changed``;
    anything else is a ProviderError naming host and step, with the tail of the output to go on.
    """
    lines = [str(line).rstrip("\r\n") for line in output]
    stripped = [line.strip() for line in lines]
    begins = [i for i, line in enumerate(stripped) if line == RESULT_BEGIN]
    ends = [i for i, line in enumerate(stripped) if line == RESULT_END]
    tail = " | ".join(x for x in stripped[-5:] if x) or "(no output)"
    if not begins or not ends:
        raise ProviderError(f"the script printed no framed result ({RESULT_BEGIN} ... {RESULT_END}); "
                            f"last output: {tail}", host=host, step=step)
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise ProviderError(f"the script printed {len(begins)} result start(s) and {len(ends)} end(s); "
                            "expected exactly one framed result", host=host, step=step)
    body = "\n".join(lines[begins[0] + 1:ends[0]]).strip()
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise ProviderError(f"the script's result is not valid JSON ({exc}): {body[:200]!r}",
                            host=host, step=step) from None
    if not isinstance(data, dict):
        raise ProviderError(f"the script's result is a {type(data).__name__}, not an object",
                            host=host, step=step)
    if not isinstance(data.get("changed"), bool):
        raise ProviderError("the script's result lacks a boolean 'changed'", host=host, step=step)
    return data


class HypervProvider:
    """Carries out steps on Hyper-V hosts through a session pool (``imaging.transport.SessionPool``)."""

    name = "hyperv"

    def __init__(self, pool: SessionPoolLike, *, guest_credential: GuestCredential | None = None,
                 timeouts: Mapping[str, float] | None = None,
                 parse_result: ResultParser | None = None) -> None:
        self.pool = pool
        self.guest_credential = guest_credential
        self.timeouts = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
        self.parse_result: ResultParser = parse_result or read_result

    @classmethod
    def from_inventory(cls, inventory: Any) -> HypervProvider:
        """The provider for every hyperv host of an inventory, with sessions from the transport.

        Host credentials are the transport's business (IMAGING_HYPERV_USER / IMAGING_HYPERV_PASSWORD or a
        prompt); the guest credential comes from IMAGING_GUEST_USER / IMAGING_GUEST_PASSWORD.
        """
        from ..transport import SessionPool  # imported late: the lab provider never needs pypsrp

        return cls(SessionPool.from_inventory(inventory), guest_credential=GuestCredential.from_env())

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

    def _parameters(self, step: Step) -> dict[str, str] | None:
        if step.action not in GUEST_ACTIONS:
            return None
        if self.guest_credential is None:
            raise ProviderError("this step runs inside the guest and needs its credential: set "
                                "IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD", host=step.host,
                                step=step.action)
        return {"GuestUser": self.guest_credential.user, "GuestPassword": self.guest_credential.password}

    def run(self, step: Step) -> dict[str, Any]:
        """Run one step on its host and return the script's result (always with ``changed``)."""
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
            raise ProviderError(str(exc), host=host, step=action,
                                transient=exc.transient) from exc
        except TimeoutError as exc:
            raise ProviderError(f"no result within {timeout_s:g} s ({exc or 'timed out'})", host=host,
                                step=action, transient=True) from exc
        except (ConnectionError, OSError) as exc:
            raise ProviderError(f"lost the connection to the host: {exc}", host=host, step=action,
                                transient=True) from exc
        except ImagingError:
            raise
        except Exception as exc:  # the transport's own failures, whatever their type
            raise ProviderError(f"the transport failed: {type(exc).__name__}: {exc}", host=host,
                                step=action) from exc
        try:
            data = self.parse_result(list(result.output), host=host, step=action)
        except ProviderError:
            raise
        except Exception as exc:
            raise ProviderError(f"could not read the script's result: {exc}", host=host,
                                step=action) from exc
        if not isinstance(data, dict) or not isinstance(data.get("changed"), bool):
            raise ProviderError("the script's result lacks a boolean 'changed'", host=host, step=action)
        if data.get("ok", True) is not True:
            message = str(data.get("error") or "the script reported failure without a message")
            if "held_by" in data:
                raise LockHeld(f"host {host} step {action}: {message}; wait for it, or finish it with "
                               "`invoke resume --instrument=...` or `invoke rollback --instrument=...`")
            where = str(data.get("where") or "").strip().splitlines()
            detail = f" ({where[0].strip()})" if where else ""
            error = ProviderError(f"{message}{detail}", host=host, step=action)
            error.result = data  # type: ignore[attr-defined]  # says whether the step changed anything first
            raise error
        return data
