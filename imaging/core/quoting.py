"""The one place where values are made safe for PowerShell, paths and shells.

Every value that reaches a PowerShell script goes through :func:`ps_literal`; every name that becomes part
of a path, a VM name or a volume label goes through one of the ``check_*`` validators, which refuse rather
than repair. Nothing else in the project builds a script or a path from a raw value.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath, PureWindowsPath

from imaging.core.errors import InputError

# PowerShell treats these four as single quotes too: each must be doubled inside a verbatim string.
_PS_SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}$")
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# A Windows path we generate or accept from the inventory: drive or UNC, plain segments only. A segment may
# start with "$" (Windows' own $Recycle.Bin, an admin share's C$): values only ever reach PowerShell as
# single-quoted literals (``ps_literal``), where "$" expands nothing.
_WIN_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._$][A-Za-z0-9 _.$()+-]*(?<![ .])$")


def ps_literal(value: object) -> str:
    """Render ``value`` as a PowerShell literal that evaluates to exactly that value and nothing else.

    Strings become verbatim (single-quoted) strings, in which PowerShell expands nothing: no ``$``, no
    backtick escapes, no subexpressions. Only the quote characters need doubling.
    """
    if value is None:
        return "$null"
    if isinstance(value, bool):
        return "$true" if value else "$false"
    if isinstance(value, int):
        # Outside 64 bits PowerShell would silently read the number as a (lossy) double.
        if not -(2**63) <= value < 2**63:
            raise InputError("integers beyond 64 bits cannot be passed to PowerShell exactly", value=value)
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise InputError("NaN and infinity cannot be passed to PowerShell", value=value)
        return repr(value)
    if isinstance(value, str):
        if "\x00" in value:
            raise InputError("a NUL character cannot be passed to PowerShell", value=value)
        out = []
        for ch in value:
            out.append(ch + ch if ch in _PS_SINGLE_QUOTES else ch)
        return "'" + "".join(out) + "'"
    if isinstance(value, Mapping):
        # PowerShell hashtable keys ignore case: two keys equal but for case would fail at run time.
        seen: dict[str, object] = {}
        for k in value:
            folded = str(k).casefold()
            if folded in seen:
                raise InputError("keys equal but for case cannot both be passed to PowerShell",
                                 value=[seen[folded], k])
            seen[folded] = k
        items = "; ".join(f"{ps_literal(str(k))} = {ps_literal(v)}" for k, v in value.items())
        return "[ordered]@{" + items + "}"
    if isinstance(value, Sequence):
        # @(...) unrolls an array inside it, so @(@(1, 2)) is 1, 2; the unary comma keeps a lone item whole.
        if len(value) == 1:
            return "@(," + ps_literal(value[0]) + ")"
        return "@(" + ", ".join(ps_literal(v) for v in value) + ")"
    raise InputError(f"cannot pass a {type(value).__name__} to PowerShell", value=value)


def check_name(value: object, *, field: str, file: str | None = None) -> str:
    """A name that ends up in a VM name, a file name or a script: letters, digits, ``_ . -``; 1-63 chars."""
    # fullmatch: ``$`` would let a trailing newline through ("NDXZOOM\n")
    if not isinstance(value, str) or not NAME_RE.fullmatch(value) or value in (".", ".."):
        raise InputError(
            "not a safe name", file=file, field=field, value=value,
            fix="use 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit")
    if value.endswith(".") or value.split(".", 1)[0].upper() in _WIN_RESERVED:
        raise InputError(
            "not a name Windows can hold (a device name like NUL or COM1, or a trailing dot)", file=file,
            field=field, value=value, fix="choose another name; Windows would open a device or drop the dot")
    return value


def check_label(value: object, *, field: str, file: str | None = None) -> str:
    """An NTFS volume label we mount by: letters, digits, ``_ -``; at most 32 characters."""
    if not isinstance(value, str) or not LABEL_RE.fullmatch(value):
        raise InputError(
            "not a safe volume label", file=file, field=field, value=value,
            fix="use 1-32 letters, digits, '_' or '-', starting with a letter or digit")
    return value


def check_sha256(value: object, *, field: str = "sha256", file: str | None = None) -> str:
    if not isinstance(value, str) or not SHA256_RE.fullmatch(value):
        raise InputError("not a sha256 (64 lowercase hex digits)", file=file, field=field, value=value,
                         fix="copy the hash from the artifact manifest")
    return value


def check_windows_path(value: object, *, field: str, file: str | None = None) -> str:
    """An absolute Windows path (``C:\\...`` or ``\\\\server\\share\\...``) made of plain segments.

    Plain means no ``..``, no wildcard, no quote, no ``$`` expansion traps beyond a share's ``$`` suffix.
    """
    fix = r"use an absolute path like C:\Instrument\Apps or \\server\share\folder with plain folder names"
    if not isinstance(value, str) or not value:
        raise InputError("not a Windows path", file=file, field=field, value=value, fix=fix)
    p = PureWindowsPath(value)
    if not p.anchor or not (p.drive and p.root):
        raise InputError("not an absolute Windows path", file=file, field=field, value=value, fix=fix)
    for seg in p.parts[1:]:
        if seg in (".", "..") or not _WIN_SEGMENT_RE.fullmatch(seg):
            raise InputError(f"unsafe path segment {seg!r}", file=file, field=field, value=value, fix=fix)
    return value


def check_relpath(value: object, *, field: str, file: str | None = None) -> str:
    """A relative path inside a volume (forward or back slashes): no absolute path, no ``..``, no empties."""
    fix = "give a path relative to the volume, like bin/server.dll, without '..'"
    if not isinstance(value, str) or not value or "\x00" in value:
        raise InputError("not a relative path", file=file, field=field, value=value, fix=fix)
    norm = value.replace("\\", "/")
    if norm.startswith("/") or PureWindowsPath(value).drive or re.match(r"^[A-Za-z]:", value):
        raise InputError("absolute paths are not allowed", file=file, field=field, value=value, fix=fix)
    parts = PurePosixPath(norm).parts
    if any(seg in ("..", ".") for seg in norm.split("/")) or not parts:
        raise InputError("'..' and '.' are not allowed", file=file, field=field, value=value, fix=fix)
    if any(not seg.strip() or seg != seg.strip() for seg in norm.split("/")):
        raise InputError("empty or space-padded path segment", file=file, field=field, value=value, fix=fix)
    for seg in parts:
        check_windows_name(seg, field=field, file=file)
    return "/".join(parts)


def check_windows_name(value: object, *, field: str, file: str | None = None) -> str:
    """A name Windows can hold (``check_ntfs_name``) that is not a look-alike of another (``check_not_lookalike``):
    path segments, and free-form names such as a Hyper-V virtual switch."""
    return check_not_lookalike(check_ntfs_name(value, field=field, file=file), field=field, file=file)


# Scripts whose letters look alike: a name mixing two of them is a look-alike (the micro sign, accents and
# other letters of one script are fine).
_CONFUSABLE_SCRIPTS = frozenset({"LATIN", "CYRILLIC", "GREEK"})


def _script(ch: str) -> str | None:
    """The script of a letter, by its Unicode name (LATIN, CYRILLIC, GREEK, ...); None for anything else."""
    if not ch.isalpha():
        return None
    name = unicodedata.name(ch, "")
    return name.split(" ", 1)[0] if name else None


def check_not_lookalike(value: str, *, field: str, file: str | None = None) -> str:
    """Refuse a name that only looks like another: letters of two scripts in one name (a Cyrillic 'а' in
    'server'), or fullwidth forms ('／', 'ｓ'). Such a name names a different file than the one it shows."""
    if any("\uff00" <= ch <= "\uffef" for ch in value):
        raise InputError("the name holds fullwidth characters that look like ordinary ones", file=file, field=field,
                         value=value, fix="type the name again with ordinary characters")
    scripts = {sc for sc in map(_script, value) if sc in _CONFUSABLE_SCRIPTS}
    if len(scripts) > 1:
        raise InputError(f"the name mixes letters of {' and '.join(sorted(scripts))} scripts, so it only looks "
                         "like the name it shows", file=file, field=field, value=value,
                         fix="type the name again in one script (the look-alike letters are another file)")
    return value


# Names Windows keeps for devices, with or without an extension, in any case.
_WIN_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} | {
    f"{dev}{n}" for dev in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"}
_WIN_BAD_CHARS_RE = re.compile(r'[<>:"/\\|?*\x00-\x1f]')


def check_ntfs_name(value: object, *, field: str, file: str | None = None) -> str:
    """One file or folder name that Windows can create and open on an NTFS volume.

    Refuses the characters Windows forbids (``< > : " / \\ | ? *`` and control characters), device names
    (``CON``, ``NUL``, ``COM1``, ``LPT1``... also with an extension), a trailing dot or space, names that
    are not valid Unicode, and names longer than 255 UTF-16 units.
    """
    fix = "rename it: no < > : \" / \\ | ? * or control characters, no device names like CON or NUL, " \
          "no trailing dot or space"
    if not isinstance(value, str) or value in ("", ".", ".."):
        raise InputError("not a file name", file=file, field=field, value=value, fix=fix)
    try:
        units = len(value.encode("utf-16-le")) // 2
    except UnicodeEncodeError:
        raise InputError("file name is not valid Unicode", file=file, field=field, value=value,
                         fix="rename it using UTF-8") from None
    if _WIN_BAD_CHARS_RE.search(value):
        bad = sorted(set(_WIN_BAD_CHARS_RE.findall(value)))
        raise InputError(f"file name contains {', '.join(repr(c) for c in bad)}, which Windows forbids",
                         file=file, field=field, value=value, fix=fix)
    if value[-1] in ". ":
        raise InputError("file name ends with a dot or space, which Windows strips", file=file,
                         field=field, value=value, fix=fix)
    if value.split(".", 1)[0].rstrip(" ").upper() in _WIN_RESERVED:
        raise InputError("file name is a Windows device name", file=file, field=field, value=value, fix=fix)
    if units > 255:
        raise InputError(f"file name is {units} UTF-16 units long; NTFS allows 255", file=file,
                         field=field, value=value, fix="shorten it")
    return value
