"""Errors the user sees. Each one says what is wrong, where, and how to fix it."""

from __future__ import annotations


class ImagingError(Exception):
    """Base for every error the tool reports to its user (tasks print these without a traceback)."""


class InputError(ImagingError, ValueError):
    """Bad input: a file, field and value the user can correct. Raised before anything is changed.

    It is a ValueError too, so validators inside data models can raise it and keep its fix.
    """

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None,
                 value: object = None, fix: str | None = None) -> None:
        self.file, self.field, self.value, self.fix = file, field, value, fix
        self.reason = message
        parts = []
        if file:
            parts.append(str(file))
        if field:
            parts.append(f"field '{field}'")
        where = ": ".join(parts)
        text = f"{where}: {message}" if where else message
        if value is not None:
            text += f" (got {value!r})"
        if fix:
            text += f". Fix: {fix}"
        super().__init__(text)


class ValidationFailed(ImagingError):
    """Several input problems found at once (the inventory is checked as a whole)."""

    def __init__(self, problems: list[InputError]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) found:\n{lines}")


class ProviderError(ImagingError):
    """A provider refused or failed a step (a Hyper-V rule, a script error, a lost host)."""

    def __init__(self, message: str, *, host: str | None = None, step: str | None = None,
                 transient: bool = False) -> None:
        self.host, self.step, self.transient = host, step, transient
        where = " ".join(x for x in (f"host {host}" if host else "", f"step {step}" if step else "") if x)
        super().__init__(f"{where}: {message}" if where else message)


class LockHeld(ImagingError):
    """Another operation holds the instrument."""


class ArtifactError(ImagingError):
    """An artifact is missing, corrupted, or not staged."""


_OS_FIXES = {
    "ENOSPC": "the disk is full: free space on it (or point IMAGING_STATE elsewhere) and run the command again; "
              "a half-done operation is finished with `invoke resume` or undone with `invoke rollback`",
    "EDQUOT": "the disk quota is used up: free space and run the command again",
    "EROFS": "the file system is read-only: remount it read-write or point IMAGING_STATE elsewhere",
    "EACCES": "you may not write there: run as the user that owns the state folder, or fix its permissions",
    "EPERM": "the operation is not permitted there: check the owner and permissions of the path",
    "ENAMETOOLONG": "the path is too long: use a shorter state folder (IMAGING_STATE) or shorter names",
}


def os_error(exc: OSError, where: str | None = None) -> ImagingError:
    """An operating system error as the user sees every error: the path, what went wrong, and the fix.
    ``where`` names the place when the error does not (a write that found the disk full names no file)."""
    import errno
    import os

    name = errno.errorcode.get(exc.errno or 0, "")
    path = os.fspath(exc.filename) if exc.filename else where
    text = f"{path or 'a file'}: {exc.strerror or exc}"
    fix = _OS_FIXES.get(name)
    if name in ("ENOSPC", "EDQUOT") and path:
        folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
        while folder and not os.path.isdir(folder) and os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)
        try:
            st = os.statvfs(folder)
            text += f" ({st.f_bavail * st.f_frsize // (1024 * 1024)} MiB free there)"
        except OSError:
            pass
    return ImagingError(f"{text}. Fix: {fix}" if fix else text)
