"""Which remoting failures are the network's (transient: safe to retry on a fresh session before a script
started) and which are the script's or the host's, and how each is said to the user."""

from __future__ import annotations

import requests
from pypsrp.exceptions import WinRMTransportError, WSManFaultError


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
