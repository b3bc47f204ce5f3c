"""Print the lowest versions pyproject.toml allows for the runtime dependencies, as pip pins (name==x.y)."""

import re
import tomllib
from pathlib import Path

deps = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
for dep in deps:
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-\[\]]+)\s*>=\s*([0-9][^,;\s]*)\s*", dep)
    if not m:
        raise SystemExit(f"pyproject.toml: dependency {dep!r} has no '>=' floor to test")
    print(f"{m.group(1)}=={m.group(2)}")
