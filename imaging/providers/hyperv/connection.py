"""How to reach one host's WinRM endpoint: validated settings that refuse, at construction, every setting
that would leak secrets (Basic auth, plain HTTP without message encryption, certificate checks turned off
without saying so), and the optional packages an authentication method needs.

The bottom of the Hyper-V stack: the session pool and WinRS are built on it, the provider on top of both.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imaging.core.errors import InputError
from imaging.core.quoting import check_name

log = logging.getLogger(__name__)

AUTH_METHODS = ("negotiate", "kerberos", "ntlm", "credssp", "certificate")
ENCRYPTION_MODES = ("auto", "always", "never")
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")
_ADDRESS_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252})$")
_URL_PATH_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


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
        for name in ("port", "ssl", "auth", "cert_validation", "max_concurrent", "message_encryption"):
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
                    "use ssl: true (port 5986), or message_encryption 'always' with negotiate/kerberos",
                )
            if self.auth == "certificate":
                raise self._bad(
                    "certificate authentication needs HTTPS", "ssl", self.ssl, "set ssl: true (port 5986)"
                )
            if self.message_encryption == "auto":
                raise self._bad(
                    "plain HTTP is accepted only when every message is encrypted, and 'auto' does not say so",
                    "message_encryption",
                    self.message_encryption,
                    "use ssl: true (port 5986, certificate validated), or message_encryption: always with "
                    "negotiate, kerberos or credssp (NTLM over HTTP encrypts with weak keys: prefer HTTPS)",
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
                    "give the path of a PEM CA bundle, or true to use the default bundle (certifi)",
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

    def trust(self) -> tuple[bool | str, str]:
        """What validates the host's TLS certificate: the value handed to the transport and a sentence for
        the operator. The inventory's setting wins: ``true`` means the default CA bundle even when
        REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE is set (requests would otherwise swap it in silently)."""
        if not self.ssl:
            return False, f"none: plain HTTP, each message encrypted by {self.auth} (message_encryption: always)"
        if isinstance(self.cert_validation, str):
            return self.cert_validation, f"the CA bundle {self.cert_validation} (cert_validation in hosts.yaml)"
        if self.cert_validation is False:
            return False, "NONE: certificate validation is off (allow_unvalidated_cert)"
        import requests.certs

        default = requests.certs.where()
        said = "the default CA bundle " + default
        env = [f"{k}={os.environ[k]}" for k in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE") if os.environ.get(k)]
        if env:
            said += (f" ({', '.join(env)} is ignored: to trust that bundle, set cert_validation to its path for "
                     f"host {self.host} in hosts.yaml)")
        return default, said

    @staticmethod
    def _address_ok(address: str) -> bool:
        try:
            ipaddress.ip_address(address)
            return True
        except ValueError:
            return bool(_ADDRESS_RE.match(address)) and ".." not in address


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




def endpoint_url(connection: Connection) -> str:
    """The endpoint's URL (IPv6 addresses bracketed)."""
    server = connection.address
    try:
        if ipaddress.ip_address(server).version == 6:
            server = f"[{server}]"
    except ValueError:
        pass
    scheme = "https" if connection.ssl else "http"
    return f"{scheme}://{server}:{connection.port}/{connection.path}"
