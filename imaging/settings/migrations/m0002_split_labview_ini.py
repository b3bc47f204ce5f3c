"""v2 -> v3: labview/instrument.ini is split into labview/dae.ini and labview/sample_environment.ini.

The data acquisition and the sample environment VIs are now separate modules that each read their own
file, so a change to one can no longer break the other. Sections named ``Sample Environment`` (and any
``Sample Environment ...`` sub-section) go to sample_environment.ini; every other section goes to dae.ini.
Comments before the first section stay with dae.ini.
"""

from __future__ import annotations

from pathlib import Path

from imaging.settings.migrations._text import MigrationError, join_sections, parse_ini, split_sections, write_text

FROM_VERSION = 2
TO_VERSION = 3
DESCRIPTION = "Split labview/instrument.ini into labview/dae.ini and labview/sample_environment.ini"

OLD = "labview/instrument.ini"
DAE = "labview/dae.ini"
SAMPLE_ENV = "labview/sample_environment.ini"


def _is_sample_env(name: str | None) -> bool:
    return name is not None and (name == "Sample Environment" or name.startswith("Sample Environment "))


def migrate(tree: Path) -> None:
    old = Path(tree) / OLD
    if not old.exists():
        return  # already split, or this tree (an overlay) never had the file
    text = old.read_text(encoding="utf-8")
    parse_ini(text, file=OLD)
    sections = split_sections(text)
    dae = [s for s in sections if not _is_sample_env(s.name)]
    env = [s for s in sections if _is_sample_env(s.name)]
    for rel in (DAE, SAMPLE_ENV):
        if (Path(tree) / rel).exists():
            written = (Path(tree) / rel).read_text(encoding="utf-8")
            if written != join_sections(dae if rel == DAE else env):
                raise MigrationError(f"{rel} already exists next to {OLD} with different content; merge them by "
                                     "hand, then rerun")
    if dae:
        write_text(Path(tree) / DAE, join_sections(dae))
    if env:
        write_text(Path(tree) / SAMPLE_ENV, join_sections(env))
    old.unlink()  # last: a rerun after a failure above starts again from the untouched original


def check(tree: Path) -> None:
    if (Path(tree) / OLD).exists():
        raise MigrationError(f"{OLD} is still there after the split")
    for rel in (DAE, SAMPLE_ENV):
        path = Path(tree) / rel
        if path.exists():
            parser = parse_ini(path.read_text(encoding="utf-8"), file=rel)
            wrong = [s for s in parser.sections() if _is_sample_env(s) != (rel == SAMPLE_ENV)]
            if wrong:
                raise MigrationError(f"{rel} holds sections that belong in the other file: {', '.join(wrong)}")
