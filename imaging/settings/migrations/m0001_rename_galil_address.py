"""v1 -> v2: the Galil controller address macro GALILADDR becomes MOTOR_HOST in every XML file.

The value has long been a host name, not an address, and other motion controllers (not only Galils) now
use the same macro. Every ``<macro name="GALILADDR" .../>`` in any XML file of the tree is renamed; the
value and the rest of the file stay byte-for-byte as they were.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

from imaging.settings.migrations._text import MigrationError, write_text

FROM_VERSION = 1
TO_VERSION = 2
DESCRIPTION = "Rename the macro GALILADDR to MOTOR_HOST in every IOC and device XML file"

OLD, NEW = "GALILADDR", "MOTOR_HOST"
_MACRO = re.compile(r'(<macro\b[^>]*?\bname\s*=\s*)(["\'])' + OLD + r"\2")


def migrate(tree: Path) -> None:
    for path in sorted(Path(tree).rglob("*.xml")):
        text = path.read_text(encoding="utf-8")
        new = _MACRO.sub(lambda m: f"{m.group(1)}{m.group(2)}{NEW}{m.group(2)}", text)
        write_text(path, new)


def check(tree: Path) -> None:
    for path in sorted(Path(tree).rglob("*.xml")):
        try:
            root = ET.fromstring(path.read_bytes())
        except ET.ParseError as exc:
            raise MigrationError(f"{path.relative_to(tree).as_posix()}: not valid XML: {exc}") from None
        for macro in root.iter("macro"):
            if macro.get("name") == OLD:
                raise MigrationError(f"{path.relative_to(tree).as_posix()}: a {OLD} macro is left (written in a "
                                     "form this migration does not recognise); rename it by hand")
        for ioc in root.iter("ioc"):
            names = [m.get("name") for m in ioc.iter("macro")]
            if names.count(NEW) > 1:
                raise MigrationError(f"{path.relative_to(tree).as_posix()}: IOC {ioc.get('name')} now has "
                                     f"{NEW} twice (it had both {OLD} and {NEW}); keep one")
