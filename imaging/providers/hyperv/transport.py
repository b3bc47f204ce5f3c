"""PowerShell remoting to Hyper-V hosts: safe connection settings, credentials, reused sessions, results.

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
one shell, and a host never has more than ``max_concurrent`` PowerShell shells open from us (plus, if
``run_command`` is used, at most as many WinRS cmd shells).
"""

from __future__ import annotations

import getpass
import ipaddress
import json
import logging
import math
import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import requests
from pypsrp.complex_objects import PSInvocationState
from pypsrp.exceptions import (
    AuthenticationError,
    WinRMError,
    WinRMTransportError,
    WSManFaultError,
)
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan

from imaging.core.errors import InputError, ProviderError
from imaging.core.quoting import check_name, windows_command_line
from imaging.core.redaction import REDACTED, RedactingFilter, redact, register_secret
from imaging.model.inventory import HOSTS_FILE
from imaging.providers.hyperv.scripts import RESULT_BEGIN, RESULT_END
from imaging.providers.hyperv.winrs import CommandResult, WinRSSession

__all__ = [
    "RESULT_BEGIN",
    "RESULT_END",
    "CommandResult",
    "Connection",
    "Credentials",
    "RedactingFilter",
    "ScriptResult",
    "Secret",
    "SessionPool",
    "parse_result",
    "redact",
]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

AUTH_METHODS = ("negotiate", "kerberos", "ntlm", "credssp", "certificate")
ENCRYPTION_MODES = ("auto", "always", "never")
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")
_ADDRESS_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
_URL_PATH_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


# --------------------------------------------------------------------------------------------- connection
@dataclass
class Connection:
    """How to reach one host's WinRM endpoint. Refuses, at construction, every setting that leaks secrets."""

    host: str
    address: str
    port: int = 5986
    ssl: bool = True
    auth: str = "negotiate"
    cert_validation: bool | str = True
    connect_timeout_s: float = 10.0
    operation_timeout_s: float = 20.0
    message_encryption: str = "auto"
    max_concurrent: int = 2
    # Turning certificate validation off is refused unless this is also set (and then warned about loudly).
    allow_unvalidated_cert: bool = False
    # TEST ONLY: plain HTTP without message encryption, accepted for 127.0.0.1 / ::1 and nothing else.
    insecure_loopback: bool = False
    path: str = "wsman"
    configuration_name: str = "Microsoft.PowerShell"
    # The inventory file the settings came from, so errors can name it.
    source: str | None = None

    def _bad(self, message: str, field_name: str, value: object, fix: str) -> InputError:
        return InputError(
            message, file=self.source, field=f"hosts.{self.host}.{field_name}", value=value, fix=fix
        )

    @classmethod
    def from_inventory(cls, host: Any, *, source: str | None = None, **overrides: Any) -> Connection:
        """Settings from an inventory host entry (``imaging.model.inventory.Host``: name, address, port, ssl, auth,
        cert_validation, max_concurrent); timeouts and the rest keep their defaults unless overridden."""
        values: dict[str, Any] = {"host": host.name, "address": host.address, "source": source}
        for name in ("port", "ssl", "auth", "cert_validation", "max_concurrent"):
            if getattr(host, name, None) is not None:
                values[name] = getattr(host, name)
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        check_name(self.host, field="host", file=self.source)
        if isinstance(self.address, str) and self.address.startswith("[") and self.address.endswith("]"):
            self.address = self.address[1:-1]  # the inventory may bracket IPv6; the libraries add their own
        if not isinstance(self.address, str) or not self._address_ok(self.address):
            raise self._bad(
                "not a host name or IP address",
                "address",
                self.address,
                "give the host's DNS name or IP address, without scheme or port",
            )
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 1 <= self.port <= 65535:
            raise self._bad(
                "not a TCP port", "port", self.port, "use 5986 (WinRM over HTTPS) or another 1-65535"
            )
        for flag in ("ssl", "allow_unvalidated_cert", "insecure_loopback"):
            if not isinstance(getattr(self, flag), bool):
                raise self._bad("must be true or false", flag, getattr(self, flag), "write true or false")
        if not isinstance(self.path, str) or not _URL_PATH_RE.match(self.path):
            raise self._bad("not a WinRM URL path", "path", self.path, "leave it at the default, wsman")
        check_name(self.configuration_name, field=f"hosts.{self.host}.configuration_name", file=self.source)
        auth = str(self.auth).lower()
        if auth == "basic":
            raise self._bad(
                "Basic authentication sends the password in clear and is refused",
                "auth",
                self.auth,
                f"use one of {', '.join(AUTH_METHODS)}",
            )
        if auth not in AUTH_METHODS:
            raise self._bad(
                "unknown authentication method", "auth", self.auth, f"use one of {', '.join(AUTH_METHODS)}"
            )
        self.auth = auth
        if self.message_encryption not in ENCRYPTION_MODES:
            raise self._bad(
                "unknown message encryption mode",
                "message_encryption",
                self.message_encryption,
                f"use one of {', '.join(ENCRYPTION_MODES)}",
            )
        for name in ("connect_timeout_s", "operation_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
                raise self._bad(
                    "timeout must be a number of seconds above 0 and at most 3600",
                    name,
                    value,
                    "give a number of seconds such as 20",
                )
        if (
            isinstance(self.max_concurrent, bool)
            or not isinstance(self.max_concurrent, int)
            or not 1 <= self.max_concurrent <= 32
        ):
            raise self._bad(
                "must be a whole number from 1 to 32",
                "max_concurrent",
                self.max_concurrent,
                "use 2 unless the host's WinRM quotas were raised",
            )
        if self.insecure_loopback:
            if self.address not in LOOPBACK_ADDRESSES:
                raise self._bad(
                    "insecure_loopback is a test-only switch and only accepted for 127.0.0.1 or ::1",
                    "insecure_loopback",
                    self.address,
                    "remove insecure_loopback; real hosts need HTTPS or message encryption",
                )
        elif not self.ssl:
            if self.message_encryption == "never":
                raise self._bad(
                    "plain HTTP without message encryption would expose every script and secret",
                    "message_encryption",
                    self.message_encryption,
                    "use ssl: true (port 5986), or message_encryption 'auto' with negotiate/kerberos",
                )
            if self.auth == "certificate":
                raise self._bad(
                    "certificate authentication needs HTTPS", "ssl", self.ssl, "set ssl: true (port 5986)"
                )
        if self.ssl and self.auth == "certificate" and self.message_encryption == "always":
            raise self._bad(
                "certificate authentication cannot add message encryption (TLS already encrypts)",
                "message_encryption",
                self.message_encryption,
                "use 'auto'",
            )
        if isinstance(self.cert_validation, str):
            if not Path(self.cert_validation).is_file():
                raise self._bad(
                    "CA bundle not found",
                    "cert_validation",
                    self.cert_validation,
                    "give the path of a PEM CA bundle, or true to use the system store",
                )
        elif self.cert_validation is not True:
            if self.cert_validation is not False:
                raise self._bad(
                    "must be true, false or a CA bundle path",
                    "cert_validation",
                    self.cert_validation,
                    "use true",
                )
            if self.ssl and not self.allow_unvalidated_cert:
                raise self._bad(
                    "turning TLS certificate validation off lets anyone impersonate the host",
                    "cert_validation",
                    self.cert_validation,
                    "give a CA bundle path; if you really must, also set allow_unvalidated_cert: true",
                )
            if self.ssl:
                log.warning(
                    "!!! TLS certificate validation is OFF for host %s (%s): the connection can be "
                    "intercepted and credentials stolen. Use a CA bundle instead. !!!",
                    self.host,
                    self.address,
                )

    @staticmethod
    def _address_ok(address: str) -> bool:
        try:
            ipaddress.ip_address(address)
            return True
        except ValueError:
            return bool(_ADDRESS_RE.match(address)) and ".." not in address

    def wsman_kwargs(self, credentials: Credentials) -> dict[str, Any]:
        """Keyword arguments for ``pypsrp.wsman.WSMan``; timeouts whole seconds as WSMan wants them."""
        operation = max(1, math.ceil(self.operation_timeout_s))
        kwargs: dict[str, Any] = {
            "server": self.address,
            "port": self.port,
            "ssl": self.ssl,
            "path": self.path,
            "auth": self.auth,
            "cert_validation": self.cert_validation,
            "encryption": "never" if self.insecure_loopback else self.message_encryption,
            "connection_timeout": self.connect_timeout_s,
            "operation_timeout": operation,
            # an HTTP read must outlive the server's own operation timeout, or every long-poll fails
            "read_timeout": operation + 10,
            "reconnection_retries": 0,  # retries are ours, with jitter and a transient-only policy
            "no_proxy": self.insecure_loopback,
        }
        if self.auth == "certificate":
            kwargs["certificate_pem"] = credentials.cert_pem
            kwargs["certificate_key_pem"] = credentials.key_pem
        else:
            kwargs["username"] = credentials.username
            kwargs["password"] = credentials.password
        return kwargs


# Optional Python packages an authentication method needs (pyspnego speaks NTLM by itself; Kerberos needs
# python-gssapi or pykrb5, CredSSP needs requests-credssp), and the extra of this project that brings them.
_AUTH_PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "kerberos": (("gssapi", "krb5"), "kerberos"),
    "credssp": (("requests_credssp",), "credssp"),
}


def missing_auth_package(auth: str) -> str | None:
    """Why ``auth`` cannot work on this machine (a missing optional package, with the fix), else None."""
    if auth not in _AUTH_PACKAGES:
        return None
    modules, extra = _AUTH_PACKAGES[auth]
    for module in modules:
        try:
            __import__(module)
            return None
        except ImportError:
            continue
    return (
        f"auth '{auth}' needs the Python package {' or '.join(modules)}, which is not installed here; "
        f"install it with `pip install 'imaging[{extra}]'` (Kerberos also needs the system's krb5 "
        "libraries and a /etc/krb5.conf for the domain), or use another auth for this host"
    )


# -------------------------------------------------------------------------------------------- credentials
def _env_key(host: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", host.upper())


@dataclass(frozen=True, repr=False)
class Credentials:
    """Who we are on a host. From the environment or a prompt, never from the inventory; never printed."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cert_pem: str | None = None
    key_pem: str | None = None

    def __post_init__(self) -> None:
        register_secret(self.password)

    def __repr__(self) -> str:
        shown = REDACTED if self.password else None
        return (
            f"Credentials(username={self.username!r}, password={shown!r}, "
            f"cert_pem={self.cert_pem!r}, key_pem={self.key_pem!r})"
        )

    __str__ = __repr__

    @classmethod
    def for_connection(
        cls,
        connection: Connection,
        *,
        environ: Mapping[str, str] | None = None,
        interactive: bool | None = None,
        prompt: Callable[[str], str] | None = None,
        ask_user: Callable[[str], str] | None = None,
    ) -> Credentials:
        """Per-host variables win over the global ones; prompt only when a person is at a terminal."""
        env = os.environ if environ is None else environ
        host_key = _env_key(connection.host)
        if connection.auth == "certificate":
            cert = env.get("IMAGING_HYPERV_CERT_PEM")
            key = env.get("IMAGING_HYPERV_KEY_PEM")
            for name, value in (("IMAGING_HYPERV_CERT_PEM", cert), ("IMAGING_HYPERV_KEY_PEM", key)):
                if not value:
                    raise InputError(
                        "certificate authentication needs a client certificate and key",
                        field=name,
                        fix=f"export {name}=/path/to/file.pem",
                    )
                if not Path(value).is_file():
                    raise InputError(
                        "file not found", field=name, value=value, fix=f"point {name} at an existing PEM file"
                    )
            return cls(cert_pem=cert, key_pem=key)

        user = env.get(f"IMAGING_HYPERV_{host_key}_USER") or env.get("IMAGING_HYPERV_USER")
        password = env.get(f"IMAGING_HYPERV_{host_key}_PASSWORD") or env.get("IMAGING_HYPERV_PASSWORD")
        if password:
            register_secret(password)
        if user and password:
            return cls(username=user, password=password)
        if connection.auth == "kerberos" and not password:
            # a Kerberos ticket cache (kinit) may be all there is; the user name is then optional
            return cls(username=user or None)
        if interactive is None:
            interactive = sys.stdin is not None and sys.stdin.isatty()
        if not interactive:
            raise InputError(
                f"no credentials for host {connection.host}",
                field="environment",
                fix=(
                    f"export IMAGING_HYPERV_{host_key}_USER and IMAGING_HYPERV_{host_key}_PASSWORD "
                    "(or IMAGING_HYPERV_USER / IMAGING_HYPERV_PASSWORD for every host), or run at a terminal "
                    "to be asked"
                ),
            )
        if not user:
            user = (ask_user or input)(f"User for {connection.host} ({connection.address}): ").strip()
        if not password:
            password = (prompt or getpass.getpass)(f"Password for {user} on {connection.host}: ")
        return cls(username=user, password=password)


@dataclass(frozen=True, repr=False)
class Secret:
    """A pipeline parameter value that is a secret: registered for redaction, never shown."""

    value: str

    def __post_init__(self) -> None:
        register_secret(self.value)

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    __str__ = __repr__


# ----------------------------------------------------------------------------------------------- results
@dataclass
class ScriptResult:
    """What one script run produced: its JSON result and what else it said."""

    host: str
    step: str
    data: dict[str, Any]
    output: list[str]
    warnings: list[str]
    attempts: int
    duration_s: float


def _as_lines(output_lines: Iterable[object]) -> list[str]:
    lines: list[str] = []
    for item in output_lines:
        text = "" if item is None else str(item)
        lines.extend(text.splitlines() or [""])
    return lines


def _redact_value(value: Any) -> Any:
    """``value`` with every registered secret removed from its strings (keys included)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redact_value(v) for v in value]
    if isinstance(value, dict):
        return {redact(str(k)): _redact_value(v) for k, v in value.items()}
    return value


def parse_result(output_lines: Iterable[object], *, host: str, step: str) -> dict[str, Any]:
    """The one JSON object a step script wrote between ``RESULT_BEGIN`` and ``RESULT_END``.

    The only result parser: the session pool uses it for every script, the hyperv provider reads what it
    returns. Exactly one framed block must be present (lines may carry CR/LF and indentation), holding a JSON
    object with a boolean ``changed`` (the step contract); anything else is a ProviderError naming host and
    step, with the tail of the output to go on. Secrets are redacted from the returned strings, because
    results are journaled.
    """
    lines = [line.rstrip("\r") for line in _as_lines(output_lines)]
    begins = [i for i, line in enumerate(lines) if line.strip() == RESULT_BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == RESULT_END]
    if not begins and not ends:
        tail = redact(" | ".join(x.strip() for x in lines[-5:] if x.strip()))[:300]
        raise ProviderError(
            f"the script wrote no result: no {RESULT_BEGIN} ... {RESULT_END} block in its "
            f"output (last output: {tail or 'nothing'})",
            host=host,
            step=step,
        )
    if len(begins) > 1 or len(ends) > 1:
        raise ProviderError(
            f"the script wrote {max(len(begins), len(ends))} results; exactly one is allowed",
            host=host,
            step=step,
        )
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        missing = RESULT_END if not ends else RESULT_BEGIN if not begins else "marker order"
        raise ProviderError(
            f"the script's result block is incomplete ({missing} missing or out of place)",
            host=host,
            step=step,
        )
    text = "\n".join(lines[begins[0] + 1 : ends[0]]).strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        excerpt = redact(text)[:200]
        raise ProviderError(
            f"the script's result is not valid JSON ({err.msg} at line {err.lineno} column "
            f"{err.colno}): {excerpt!r}",
            host=host,
            step=step,
        ) from None
    if not isinstance(data, dict):
        raise ProviderError(
            f"the script's result must be a JSON object, got {type(data).__name__}", host=host, step=step
        )
    if not isinstance(data.get("changed"), bool):
        raise ProviderError("the script's result lacks a boolean 'changed'", host=host, step=step)
    return _redact_value(data)


def _prop(obj: object, *names: str) -> Any:
    for name in names:
        for source in (getattr(obj, "adapted_properties", None), getattr(obj, "extended_properties", None)):
            if isinstance(source, dict) and source.get(name) not in (None, ""):
                return source[name]
        value = getattr(obj, name, None)
        if value not in (None, ""):
            return value
    return None


def describe_error_record(record: object) -> str:
    """The script's own words for an error record, with where in the script it happened."""
    message = (
        _prop(getattr(record, "exception", None), "Message", "to_string")
        if getattr(record, "exception", None) is not None
        else None
    )
    message = message or _prop(record, "details_message", "message", "reason", "fq_error") or "unknown error"
    where = []
    line_no = getattr(record, "invocation_script_line_number", None)
    if line_no:
        where.append(f"line {line_no}")
    line = getattr(record, "invocation_line", None)
    if line:
        where.append(f"in: {str(line).strip()}")
    if not where and getattr(record, "invocation_position_message", None):
        where.append(str(record.invocation_position_message).strip())
    return f"{message}" + (f" (script {' '.join(where)})" if where else "")


# -------------------------------------------------------------------------------------------- the pool
class _Transient(Exception):
    """A failure before the script could have started: safe to retry on a fresh pool."""


def _transport_message(err: BaseException) -> str:
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return "timed out connecting to the WinRM endpoint"
    if isinstance(err, requests.exceptions.ReadTimeout):
        return "the WinRM endpoint did not answer in time"
    if isinstance(err, requests.exceptions.ConnectionError):
        return f"connection failed ({type(err).__name__}: {err})"
    status = _http_status(err)
    if status is not None:
        return f"the WinRM endpoint answered HTTP {status}"
    return f"{type(err).__name__}: {err}"


def _http_status(err: BaseException) -> int | None:
    """The HTTP status behind a failure that carried no real WSMan fault, else None.

    pypsrp turns any XML-looking error body into a ``WSManFaultError``, even a proxy's HTML 503 page; the
    original ``WinRMTransportError`` survives as the exception's context. A genuine fault has a code.
    """
    if isinstance(err, WinRMTransportError):
        return err.code
    if (
        isinstance(err, WSManFaultError)
        and err.code is None
        and isinstance(err.__context__, WinRMTransportError)
    ):
        return err.__context__.code
    return None


def _is_transient(err: BaseException) -> bool:
    """Connection refused/reset, timeouts, HTTP 5xx without a WSMan fault: the network, not the script."""
    if isinstance(err, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    status = _http_status(err)
    if status is not None:
        return status >= 500
    return isinstance(err, ConnectionError | TimeoutError)


@dataclass
class _HostSlot:
    connection: Connection
    semaphore: threading.BoundedSemaphore
    mount_lock: threading.Lock = field(default_factory=threading.Lock)
    lock: threading.Lock = field(default_factory=threading.Lock)
    idle: list[RunspacePool] = field(default_factory=list)
    idle_winrs: list[WinRSSession] = field(default_factory=list)
    winrs_opened: int = 0
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
                shells, slot.idle_winrs = slot.idle_winrs, []
            for pool in pools:
                self._discard(slot, pool)
            for shell in shells:
                with suppress(Exception):
                    shell.close()

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
        wsman = WSMan(**conn.wsman_kwargs(self._credentials_for(slot)))
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

    def run_command(
        self,
        host: str,
        argv: Sequence[str],
        *,
        step: str = "run_command",
        timeout_s: float = 60.0,
        check: bool = True,
    ) -> CommandResult:
        """Run one plain program over WinRS (pywinrm, a reused cmd shell); no PowerShell runspace.

        ``argv`` is quoted by :func:`imaging.core.quoting.windows_command_line`, which refuses cmd.exe
        metacharacters. With ``check`` a non-zero exit code is a :class:`ProviderError`.
        """
        command_line = windows_command_line(argv)
        started = time.monotonic()

        def once(slot: _HostSlot, deadline: float) -> tuple[bytes, bytes, int]:
            return self._command_once(slot, command_line, step, deadline, timeout_s)

        (out, err, code), attempts = self._with_retries(host, step, timeout_s, once)
        result = CommandResult(
            host=host,
            step=step,
            command_line=command_line,
            stdout=redact(out.decode("utf-8", errors="replace")),
            stderr=redact(err.decode("utf-8", errors="replace")),
            exit_code=code,
            attempts=attempts,
            duration_s=time.monotonic() - started,
        )
        if check and code != 0:
            tail = " | ".join(result.stderr.strip().splitlines()[-3:]) or "no error output"
            raise ProviderError(f"{argv[0]} exited with code {code}: {tail}", host=host, step=step)
        return result

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

    def _command_once(
        self, slot: _HostSlot, command_line: str, step: str, deadline: float, timeout_s: float
    ) -> tuple[bytes, bytes, int]:
        host = slot.connection.host
        with slot.lock:
            session = slot.idle_winrs.pop() if slot.idle_winrs else None
        if session is None:
            session = WinRSSession(slot.connection, self._credentials_for(slot))
        healthy = False
        try:
            try:
                if not session.is_open:
                    session.open()
                    with slot.lock:
                        slot.winrs_opened += 1
                command_id = session.start(command_line)
            except Exception as err:
                if _is_transient(err):
                    raise _Transient(f"starting the command: {_transport_message(err)}") from err
                raise self._fail(err, host, step, "starting the command") from err
            try:
                finished = session.wait(command_id, deadline)
            except Exception as err:
                raise self._fail(
                    err, host, step, "waiting for the command", transient=_is_transient(err)
                ) from err
            if finished is None:
                with suppress(Exception):
                    session.finish(command_id)
                raise ProviderError(
                    f"timed out after {timeout_s:g}s; the command was stopped", host=host, step=step
                )
            try:
                session.finish(command_id)
                healthy = True
            except Exception as err:  # noqa: BLE001 - the result stands; only the shell is not trusted
                log.debug("ending a command failed, dropping its shell: %s", redact(str(err)))
            return finished
        finally:
            if healthy and not self._closed:
                with slot.lock:
                    slot.idle_winrs.append(session)
            else:
                with suppress(Exception):
                    session.close()

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
