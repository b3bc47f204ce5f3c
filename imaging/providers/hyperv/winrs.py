"""Plain commands over WinRS (a ``cmd`` shell) with pywinrm, for when a PowerShell runspace is overkill.

One cmd shell per session, reused for every command; the command line is built by
:func:`imaging.core.quoting.windows_command_line`, which refuses anything cmd.exe would interpret.
Connection settings are the same validated :class:`imaging.providers.hyperv.transport.Connection`.

pywinrm limits, stated so nobody is surprised: it has no separate connect timeout (its read timeout
covers connecting too), it speaks NTLM where pypsrp would negotiate Kerberos (``auth: negotiate`` maps
to NTLM here), and Kerberos/CredSSP need the optional ``pykerberos`` / ``requests-credssp`` packages.
"""

from __future__ import annotations

import ipaddress
import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from winrm.exceptions import WinRMOperationTimeoutError
from winrm.protocol import Protocol

if TYPE_CHECKING:
    from imaging.providers.hyperv.transport import Connection, Credentials

# pywinrm transport names for our auth methods
_PYWINRM_AUTH = {
    "negotiate": "ntlm",
    "ntlm": "ntlm",
    "kerberos": "kerberos",
    "credssp": "credssp",
    "certificate": "certificate",
}
UTF8_CODEPAGE = 65001


@dataclass
class CommandResult:
    """What a plain command produced."""

    host: str
    step: str
    command_line: str
    stdout: str
    stderr: str
    exit_code: int
    attempts: int
    duration_s: float


def endpoint_url(connection: Connection) -> str:
    server = connection.address
    try:
        if ipaddress.ip_address(server).version == 6:
            server = f"[{server}]"
    except ValueError:
        pass
    scheme = "https" if connection.ssl else "http"
    return f"{scheme}://{server}:{connection.port}/{connection.path}"


def _ca_bundle(connection: Connection) -> str | None:
    """The CA bundle to trust: the configured one, else the one requests would use (as pypsrp does)."""
    if isinstance(connection.cert_validation, str):
        return connection.cert_validation
    return os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or None


def protocol_kwargs(connection: Connection, credentials: Credentials) -> dict:
    """Keyword arguments for ``winrm.protocol.Protocol`` matching the connection's validated settings."""
    operation = max(1, math.ceil(connection.operation_timeout_s))
    kwargs: dict = {
        "endpoint": endpoint_url(connection),
        "transport": _PYWINRM_AUTH[connection.auth],
        "server_cert_validation": "validate" if connection.cert_validation is not False else "ignore",
        "ca_trust_path": _ca_bundle(connection),
        "operation_timeout_sec": operation,
        "read_timeout_sec": operation + max(10, math.ceil(connection.connect_timeout_s)),
        "message_encryption": "never" if connection.insecure_loopback else connection.message_encryption,
        "proxy": None if connection.insecure_loopback else "legacy_requests",
    }
    if connection.auth == "certificate":
        kwargs["cert_pem"], kwargs["cert_key_pem"] = credentials.cert_pem, credentials.key_pem
    else:
        kwargs["username"], kwargs["password"] = credentials.username, credentials.password
    return kwargs


class WinRSSession:
    """One cmd shell on one host, opened on first use and reused until closed."""

    def __init__(self, connection: Connection, credentials: Credentials) -> None:
        self.connection = connection
        self._protocol = Protocol(**protocol_kwargs(connection, credentials))
        self._shell_id: str | None = None

    @property
    def is_open(self) -> bool:
        return self._shell_id is not None

    def open(self) -> None:
        if self._shell_id is None:
            self._shell_id = self._protocol.open_shell(noprofile=True, codepage=UTF8_CODEPAGE)

    def start(self, command_line: str) -> str:
        """Start a command; returns its id. The whole line goes in ``Command`` so WinRS adds nothing."""
        self.open()
        return self._protocol.run_command(self._shell_id, command_line)

    def wait(self, command_id: str, deadline: float) -> tuple[bytes, bytes, int] | None:
        """Collect output until the command is done (returns it) or ``deadline`` passes (returns None)."""
        stdout, stderr = [], []
        while time.monotonic() < deadline:
            try:
                out, err, code, done = self._protocol.get_command_output_raw(self._shell_id, command_id)
            except WinRMOperationTimeoutError:
                continue
            stdout.append(out)
            stderr.append(err)
            if done:
                return b"".join(stdout), b"".join(stderr), code
        return None

    def finish(self, command_id: str) -> None:
        """Signal the command to terminate (frees it on the server; stops it if still running)."""
        self._protocol.cleanup_command(self._shell_id, command_id)

    def close(self) -> None:
        if self._shell_id is not None:
            shell_id, self._shell_id = self._shell_id, None
            self._protocol.close_shell(shell_id)
