"""Who we are on a host and in a guest: from the environment, or asked at a terminal; never from the
inventory, never printed, registered for redaction the moment they exist."""

from __future__ import annotations

import getpass
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imaging.core.errors import InputError
from imaging.core.redaction import REDACTED, check_secret, register_secret

if TYPE_CHECKING:
    from imaging.providers.hyperv.connection import Connection


def ask_for(env: Mapping[str, str], *, users: tuple[str, ...], passwords: tuple[str, ...], what: str,
            user_prompt: str, password_prompt: Callable[[str], str], fix: str, interactive: bool | None = None,
            ask_user: Callable[[str], str] | None = None,
            prompt: Callable[[str], str] | None = None) -> tuple[str, str]:
    """The one lookup of a user and password: the first of ``users`` / ``passwords`` set in the environment,
    else asked for when a person is at a terminal (the password without echo), else an error naming the
    variables. The password is registered for redaction before it is returned."""
    user = next((env[k] for k in users if env.get(k)), None)
    password = next((env[k] for k in passwords if env.get(k)), None)
    if password:
        check_secret(password, field=next(k for k in passwords if env.get(k) == password))
    if user and password:
        return user, password
    if interactive is None:
        interactive = sys.stdin is not None and sys.stdin.isatty()
    if not interactive:
        raise InputError(f"no {what}", field="environment", fix=fix)
    if not user:
        user = (ask_user or input)(user_prompt).strip()
    if not password:
        password = check_secret((prompt or getpass.getpass)(password_prompt(user)), field="password")
    return user, password


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

        if connection.auth == "kerberos" and not (env.get(f"IMAGING_HYPERV_{host_key}_PASSWORD")
                                                  or env.get("IMAGING_HYPERV_PASSWORD")):
            # a Kerberos ticket cache (kinit) may be all there is; the user name is then optional
            return cls(username=env.get(f"IMAGING_HYPERV_{host_key}_USER") or env.get("IMAGING_HYPERV_USER") or None)
        user, password = ask_for(
            env, users=(f"IMAGING_HYPERV_{host_key}_USER", "IMAGING_HYPERV_USER"),
            passwords=(f"IMAGING_HYPERV_{host_key}_PASSWORD", "IMAGING_HYPERV_PASSWORD"),
            what=f"credentials for host {connection.host}",
            user_prompt=f"User for {connection.host} ({connection.address}): ",
            password_prompt=lambda u: f"Password for {u} on {connection.host}: ",
            fix=(f"export IMAGING_HYPERV_{host_key}_USER and IMAGING_HYPERV_{host_key}_PASSWORD "
                 "(or IMAGING_HYPERV_USER / IMAGING_HYPERV_PASSWORD for every host), or run at a terminal "
                 "to be asked"),
            interactive=interactive, ask_user=ask_user, prompt=prompt)
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




@dataclass(frozen=True)
class GuestCredential:
    """The guest account used over PowerShell Direct; passed as script parameters, never rendered."""

    user: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        check_secret(self.password, field="IMAGING_GUEST_PASSWORD")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GuestCredential | None:
        env = os.environ if environ is None else environ
        user, password = env.get("IMAGING_GUEST_USER"), env.get("IMAGING_GUEST_PASSWORD")
        return cls(user, password) if user and password is not None else None

    @classmethod
    def resolve(cls, environ: Mapping[str, str] | None = None, *, interactive: bool | None = None,
                ask_user: Callable[[str], str] | None = None,
                prompt: Callable[[str], str] | None = None) -> GuestCredential:
        """From IMAGING_GUEST_USER / IMAGING_GUEST_PASSWORD, else asked for when a person is at a terminal."""
        found = cls.from_env(environ)
        if found is not None:
            return found
        user, password = ask_for(
            os.environ if environ is None else environ, users=("IMAGING_GUEST_USER",),
            passwords=("IMAGING_GUEST_PASSWORD",), what="guest credential",
            user_prompt="Guest user (PowerShell Direct): ", password_prompt=lambda u: f"Guest password for {u}: ",
            fix="export IMAGING_GUEST_USER and IMAGING_GUEST_PASSWORD (a local administrator of the instrument "
                "PCs), or run at a terminal to be asked",
            interactive=interactive, ask_user=ask_user, prompt=prompt)
        return cls(user, password)


@dataclass(frozen=True)
class DomainJoinCredential:
    """The account that joins a new guest to the domain at its first boot (``identity.domain``); passed to
    the answer-file step as script parameters, never rendered, never in the inventory."""

    user: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        check_secret(self.password, field="IMAGING_DOMAIN_JOIN_PASSWORD")

    @classmethod
    def resolve(cls, environ: Mapping[str, str] | None = None, *, interactive: bool | None = None,
                ask_user: Callable[[str], str] | None = None,
                prompt: Callable[[str], str] | None = None) -> DomainJoinCredential:
        """From IMAGING_DOMAIN_JOIN_USER / IMAGING_DOMAIN_JOIN_PASSWORD, else asked for at a terminal."""
        user, password = ask_for(
            os.environ if environ is None else environ, users=("IMAGING_DOMAIN_JOIN_USER",),
            passwords=("IMAGING_DOMAIN_JOIN_PASSWORD",), what="domain join credential",
            user_prompt="Domain join user (DOMAIN\\user): ", password_prompt=lambda u: f"Password for {u}: ",
            fix="export IMAGING_DOMAIN_JOIN_USER and IMAGING_DOMAIN_JOIN_PASSWORD (an account allowed to join "
                "computers to the instruments' OU), or run at a terminal to be asked",
            interactive=interactive, ask_user=ask_user, prompt=prompt)
        return cls(user, password)
