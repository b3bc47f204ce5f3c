"""Text helpers for migrations that must keep files byte-for-byte as the templates write them.

Parsing and re-serialising XML or ini files would reorder attributes and lose comments, so migrations edit
text: these helpers cut an ini file into its sections and put it back together without touching the rest.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass
from pathlib import Path

from imaging.core.errors import ImagingError

_HEADER = re.compile(r"^\s*\[(?P<name>[^\]]+)\]\s*$")


class MigrationError(ImagingError):
    """A migration found a file it cannot transform; the message names the file and what is wrong."""


@dataclass
class Section:
    name: str | None  # None for the lines before the first section header
    lines: list[str]  # the header (if any), the body and any blank lines after it, exactly as written

    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


def split_sections(text: str) -> list[Section]:
    """Cut an ini file into sections; joining them all again gives the file back unchanged."""
    sections: list[Section] = [Section(None, [])]
    for line in text.splitlines():
        m = _HEADER.match(line)
        if m:
            sections.append(Section(m.group("name").strip(), [line]))
        else:
            sections[-1].lines.append(line)
    return [s for s in sections if s.lines]


def join_sections(sections: list[Section]) -> str:
    """Put (some of) the sections back together as one file ending in exactly one newline."""
    text = "".join(s.text() for s in sections)
    return text.rstrip("\n").rstrip() + "\n" if text.strip() else ""


def parse_ini(text: str, *, file: str) -> configparser.ConfigParser:
    """Parse an ini file the way the migrations read it: no interpolation, keys keep their case."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=file)
    except configparser.Error as exc:
        raise MigrationError(f"{file}: not a valid ini file: {exc}") from None
    return parser


def write_text(path: Path, text: str) -> None:
    """Write a file only when its content changes (a rerun touches nothing)."""
    data = text.encode("utf-8")
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".imaging-tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
