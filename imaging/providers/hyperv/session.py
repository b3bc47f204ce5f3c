"""PowerShell remoting sessions to Hyper-V hosts, reused and bounded per host.

Why it looks like this (the design notes' "Lessons"):
- one shell per call exhausts the server's shell quota, so runspace pools are opened once per host and
  reused; concurrency per host is bounded;
- scripts return one JSON object between fixed markers; free text is never parsed;
- only transient connection failures (refused/reset, timeouts, bare HTTP 5xx) before a script was started
  are retried, with exponential back-off and jitter, on a fresh session; a script that ran and failed, or
  whose fate is unknown because the connection broke while it ran, is reported and never run again;
- secrets never reach a log record or an error message.

pypsrp's ``RunspacePool`` keeps unsynchronised per-call state (serializer reference maps, fragment
counters), so one pool must not be driven by two threads at once. A host therefore gets up to
``max_concurrent`` pools, each opened lazily and reused one call at a time: sequential calls use exactly
one shell, and a host never has more than ``max_concurrent`` PowerShell shells open from us.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
from pypsrp.complex_objects import PSInvocationState
from pypsrp.exceptions import (
    AuthenticationError,
    WinRMError,
    WSManFaultError,
)
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan

from imaging.core.errors import InputError, ProviderError
from imaging.core.redaction import redact
from imaging.model.inventory import HOSTS_FILE
from imaging.providers.hyperv.connection import Connection, missing_auth_package
from imaging.providers.hyperv.credentials import Credentials, Secret
from imaging.providers.hyperv.faults import _http_status, _is_transient, _Transient, _transport_message
from imaging.providers.hyperv.results import ScriptResult, describe_error_record, parse_result

log = logging.getLogger(__name__)
_T = TypeVar("_T")


def wsman_kwargs(connection: Connection, credentials: Credentials) -> dict[str, Any]:
    """Keyword arguments for ``pypsrp.wsman.WSMan``; timeouts whole seconds as WSMan wants them."""
    operation = max(1, math.ceil(connection.operation_timeout_s))
    kwargs: dict[str, Any] = {
        "server": connection.address,
        "port": connection.port,
        "ssl": connection.ssl,
        "path": connection.path,
        "auth": connection.auth,
        "cert_validation": connection.trust()[0],  # the inventory's trust, never an environment variable's
        "encryption": "never" if connection.insecure_loopback else connection.message_encryption,
        "connection_timeout": connection.connect_timeout_s,
        "operation_timeout": operation,
        # an HTTP read must outlive the server's own operation timeout, or every long-poll fails
        "read_timeout": operation + 10,
        "reconnection_retries": 0,  # retries are ours, with jitter and a transient-only policy
        "no_proxy": connection.insecure_loopback,
    }
    if connection.auth == "certificate":
        kwargs["certificate_pem"] = credentials.cert_pem
        kwargs["certificate_key_pem"] = credentials.key_pem
    else:
        kwargs["username"] = credentials.username
        kwargs["password"] = credentials.password
    return kwargs


@dataclass
class _HostSlot:
    connection: Connection
    semaphore: threading.BoundedSemaphore
    mount_lock: threading.Lock = field(default_factory=threading.Lock)
    lock: threading.Lock = field(default_factory=threading.Lock)
    idle: list[RunspacePool] = field(default_factory=list)
    open_pools: set[int] = field(default_factory=set)
    credentials: Credentials | None = None
    pools_opened: int = 0


class SessionPool:
    """Reused PowerShell sessions to many hosts, bounded per host, closed on exit."""

    def __init__(
        self,
        connections: Iterable[Connection] | Mapping[str, Connection],
        *,
        credentials: Mapping[str, Credentials] | Callable[[Connection], Credentials] | None = None,
        retries: int = 3,
        backoff_s: float = 0.5,
        backoff_max_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        items = connections.values() if isinstance(connections, Mapping) else connections
        self._slots: dict[str, _HostSlot] = {}
        for conn in items:
            if conn.host in self._slots:
                raise InputError(
                    "host listed twice", field="hosts", value=conn.host, fix="list each host once"
                )
            self._slots[conn.host] = _HostSlot(conn, threading.BoundedSemaphore(conn.max_concurrent))
        self._credentials = credentials
        self._retries, self._backoff_s, self._backoff_max_s = retries, backoff_s, backoff_max_s
        self._sleep, self._jitter = sleep, jitter
        self._closed = False

    @classmethod
    def from_inventory(
        cls,
        inventory: Any,
        *,
        credentials: Mapping[str, Credentials] | Callable[[Connection], Credentials] | None = None,
        connection_overrides: Mapping[str, Any] | None = None,
        **pool_options: Any,
    ) -> SessionPool:
        """One slot per ``provider: hyperv`` host of an inventory (``imaging.model.inventory.Inventory``).

        Each host's settings come from ``Connection.from_inventory`` (so its ``max_concurrent`` bounds the
        shells we open there, and a bad entry is an InputError naming hosts.yaml). Credentials are looked up
        per host by ``Credentials.for_connection`` (environment, else a prompt at a terminal) the first time
        a host is used, never from the inventory. ``connection_overrides`` apply to every host (tests use it
        for the loopback endpoint); ``pool_options`` go to the constructor (retries, back-off).
        """
        source = str(Path(inventory.root) / HOSTS_FILE)
        connections = [
            Connection.from_inventory(host, source=source, **dict(connection_overrides or {}))
            for host in inventory.hosts.values()
            if getattr(host, "provider", "hyperv") == "hyperv"
        ]
        return cls(connections, credentials=credentials, **pool_options)

    def hosts(self) -> list[str]:
        """The hosts this pool can reach."""
        return sorted(self._slots)

    def connection(self, host: str) -> Connection:
        return self._slot(host).connection

    # -- context management
    def __enter__(self) -> SessionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every open runspace pool (deletes the shells on the hosts)."""
        self._closed = True
        for slot in self._slots.values():
            with slot.lock:
                pools, slot.idle = slot.idle, []
            for pool in pools:
                self._discard(slot, pool)

    # -- per-host helpers
    def _slot(self, host: str) -> _HostSlot:
        try:
            return self._slots[host]
        except KeyError:
            raise ProviderError("no connection settings for this host", host=host) from None

    @contextmanager
    def mount_lock(self, host: str) -> Iterator[None]:
        """Hold around disk mount / drive-letter operations on ``host``: Windows races them."""
        slot = self._slot(host)
        with slot.mount_lock:
            yield

    def open_sessions(self, host: str) -> int:
        """How many runspace pools to ``host`` are open right now (idle or in use)."""
        slot = self._slot(host)
        with slot.lock:
            return len(slot.open_pools)

    def pools_opened(self, host: str) -> int:
        """How many runspace pools (remote shells) were opened to ``host`` so far."""
        return self._slot(host).pools_opened

    def _credentials_for(self, slot: _HostSlot) -> Credentials:
        with slot.lock:
            if slot.credentials is None:
                source = self._credentials
                if source is None:
                    slot.credentials = Credentials.for_connection(slot.connection)
                elif isinstance(source, Mapping):
                    if slot.connection.host not in source:
                        raise ProviderError("no credentials given for this host", host=slot.connection.host)
                    slot.credentials = source[slot.connection.host]
                else:
                    slot.credentials = source(slot.connection)
            return slot.credentials

    def _checkout(self, slot: _HostSlot, step: str) -> RunspacePool:
        with slot.lock:
            if slot.idle:
                return slot.idle.pop()
        conn = slot.connection
        missing = missing_auth_package(conn.auth)
        if missing:
            raise ProviderError(missing, host=conn.host, step=step)
        wsman = WSMan(**wsman_kwargs(conn, self._credentials_for(slot)))
        pool = RunspacePool(
            wsman, configuration_name=conn.configuration_name, min_runspaces=1, max_runspaces=1
        )
        try:
            pool.open()
        except Exception as err:
            _close_quietly(pool)
            if _is_transient(err):
                raise _Transient(f"opening a session: {_transport_message(err)}") from err
            raise self._fail(err, conn.host, step, "opening a session") from err
        with slot.lock:
            slot.pools_opened += 1
            slot.open_pools.add(id(pool))
        log.debug("opened runspace pool %s on host %s", pool.id, conn.host)
        return pool

    def _checkin(self, slot: _HostSlot, pool: RunspacePool) -> None:
        with slot.lock:
            if not self._closed:
                slot.idle.append(pool)
                return
        self._discard(slot, pool)

    def _discard(self, slot: _HostSlot, pool: RunspacePool) -> None:
        with slot.lock:
            slot.open_pools.discard(id(pool))
        _close_quietly(pool)

    @staticmethod
    def _fail(err: BaseException, host: str, step: str, doing: str, transient: bool = False) -> ProviderError:
        if isinstance(err, ProviderError):
            return err
        if isinstance(err, AuthenticationError):
            text = f"authentication failed while {doing}: {err}"
        elif isinstance(err, WSManFaultError) and _http_status(err) is None:
            text = f"the host refused {doing}: {err.message}"
        else:
            text = f"{doing}: {_transport_message(err)}"
        return ProviderError(redact(text), host=host, step=step, transient=transient)

    # -- the call
    def run_script(
        self, host: str, script: str, *, step: str, timeout_s: float, parameters: dict[str, Any] | None = None
    ) -> ScriptResult:
        """Run ``script`` on ``host`` and return its parsed result.

        ``parameters`` bind to the script's ``param()`` block as pipeline parameters, so secrets never
        appear in script text; wrap secret values in :class:`Secret` to have them redacted from logs.
        """
        params = {k: (v.value if isinstance(v, Secret) else v) for k, v in (parameters or {}).items()}
        started = time.monotonic()

        def once(slot: _HostSlot, deadline: float) -> tuple[list[str], list[str]]:
            return self._run_once(slot, script, params, step, deadline, timeout_s)

        (output, warnings), attempts = self._with_retries(host, step, timeout_s, once)
        data = parse_result(output, host=host, step=step)
        return ScriptResult(
            host=host,
            step=step,
            data=data,
            output=output,
            warnings=warnings,
            attempts=attempts,
            duration_s=time.monotonic() - started,
        )

    def _with_retries(
        self, host: str, step: str, timeout_s: float, once: Callable[[_HostSlot, float], _T]
    ) -> tuple[_T, int]:
        """Run ``once`` under the host's concurrency bound; retry only :class:`_Transient` failures."""
        if self._closed:
            raise ProviderError("the session pool is closed", host=host, step=step)
        slot = self._slot(host)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
            raise ProviderError(
                f"timeout_s must be a positive number of seconds, got {timeout_s!r}", host=host, step=step
            )
        deadline = time.monotonic() + timeout_s
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not slot.semaphore.acquire(timeout=remaining):
                raise ProviderError(
                    f"timed out after {timeout_s:g}s waiting for a free session "
                    f"(max_concurrent={slot.connection.max_concurrent})",
                    host=host,
                    step=step,
                )
            try:
                return once(slot, deadline), attempt
            except _Transient as err:
                if attempt > self._retries:
                    raise ProviderError(
                        redact(f"{err} (gave up after {attempt} attempts)"),
                        host=host,
                        step=step,
                        transient=True,
                    ) from err
                delay = min(self._backoff_max_s, self._backoff_s * 2 ** (attempt - 1))
                delay = delay * (0.5 + self._jitter())
                if time.monotonic() + delay >= deadline:
                    raise ProviderError(
                        redact(f"{err}; no time left to retry within {timeout_s:g}s"),
                        host=host,
                        step=step,
                        transient=True,
                    ) from err
                log.warning(
                    "host %s step %s: %s; retrying in %.1fs (attempt %d of %d)",
                    host,
                    step,
                    err,
                    delay,
                    attempt + 1,
                    self._retries + 1,
                )
            finally:
                slot.semaphore.release()
            self._sleep(delay)

    def _run_once(
        self,
        slot: _HostSlot,
        script: str,
        params: dict[str, Any],
        step: str,
        deadline: float,
        timeout_s: float,
    ) -> tuple[list[str], list[str]]:
        host = slot.connection.host
        pool = self._checkout(slot, step)
        healthy = False
        try:
            ps = PowerShell(pool)
            ps.add_script(script)
            if params:
                ps.add_parameters(params)
            try:
                ps.begin_invoke()
            except Exception as err:
                if _is_transient(err):
                    raise _Transient(f"starting the script: {_transport_message(err)}") from err
                raise self._fail(err, host, step, "starting the script") from err
            op_timeout = max(1, math.ceil(slot.connection.operation_timeout_s))
            while ps.state == PSInvocationState.RUNNING:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._stop(ps)
                    raise ProviderError(
                        f"timed out after {timeout_s:g}s; the script was stopped", host=host, step=step
                    )
                try:
                    ps.poll_invoke(timeout=max(1, min(op_timeout, math.ceil(remaining))))
                except Exception as err:
                    # the script may be running or done: its fate is unknown, so it is reported, not re-run
                    raise self._fail(
                        err, host, step, "waiting for the script", transient=_is_transient(err)
                    ) from err
            errors = list(ps.streams.error)
            if ps.state != PSInvocationState.COMPLETED or ps.had_errors or errors:
                details = (
                    "; ".join(describe_error_record(e) for e in errors)
                    or f"pipeline ended in state {ps.state}"
                )
                healthy = ps.state in (PSInvocationState.COMPLETED, PSInvocationState.FAILED)
                if healthy:
                    _close_pipeline(ps)
                raise ProviderError(redact(f"the script failed: {details}"), host=host, step=step)
            output = ["" if o is None else str(o) for o in ps.output]
            warnings = [redact(str(getattr(w, "message", w))) for w in ps.streams.warning]
            healthy = _close_pipeline(ps)
            return output, warnings
        finally:
            if healthy:
                self._checkin(slot, pool)
            else:
                self._discard(slot, pool)

    @staticmethod
    def _stop(ps: PowerShell) -> None:
        try:
            ps.stop()
        except (WinRMError, requests.exceptions.RequestException, OSError) as err:
            log.warning("could not stop a timed-out script: %s", redact(str(err)))


def _close_pipeline(ps: PowerShell) -> bool:
    """Release the pipeline on the server; a failure here only means the pool is no longer trusted."""
    try:
        ps.close()
        return True
    except (WinRMError, requests.exceptions.RequestException, OSError) as err:
        log.debug("closing a pipeline failed, discarding its pool: %s", redact(str(err)))
        return False


def _close_quietly(pool: RunspacePool) -> None:
    try:
        pool.close()
    except (WinRMError, requests.exceptions.RequestException, OSError) as err:
        log.debug("closing a runspace pool failed (it is dropped anyway): %s", redact(str(err)))
    with suppress(requests.exceptions.RequestException, OSError):
        pool.connection.close()
