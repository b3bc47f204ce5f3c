"""Where things live: the project checkout, the inventory, the releases, the state folder and the lab.

Every path the tool uses is derived here, once, from the project root and a few environment variables,
so that tests can point a whole run at a temporary folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Paths:
    """The folders one run of the tool works with."""

    root: Path            # the project checkout (a git repository: templates and inventory live here)
    inventory: Path       # instruments/
    releases: Path        # releases/
    templates: Path       # templates/
    state: Path           # journal, artifact store, reports, the lab (never committed)

    @property
    def journal(self) -> Path:
        return self.state / "journal.sqlite"

    @property
    def store(self) -> Path:
        return self.state / "store"

    @property
    def lab(self) -> Path:
        override = os.environ.get("IMAGING_LAB")
        return Path(override) if override else self.state / "lab"

    @property
    def reports(self) -> Path:
        return self.state / "reports"

    @property
    def locks(self) -> Path:
        return self.state / "locks"

    @property
    def runs(self) -> Path:
        """The records of fleet runs (deploy, hotfix, revert), one JSON file each."""
        return self.state / "deploys"

    @property
    def bad_releases(self) -> Path:
        """Releases rolled back on an instrument, which nothing chooses for it again by default."""
        return self.state / "bad-releases.json"

    @property
    def builds(self) -> Path:
        return self.state / "builds"

    @property
    def tmp(self) -> Path:
        """Scratch space for image builds and reads (default ``--workdir``)."""
        return self.state / "tmp"

    @property
    def hotfix_scratch(self) -> Path:
        """Where hotfix packages given as archives are unpacked to be checked."""
        return self.state / "hotfixes" / "unpacked"

    @property
    def rendered_settings(self) -> Path:
        """Default output of `invoke render`."""
        return self.state / "rendered-settings"

    @classmethod
    def from_env(cls, root: Path | None = None) -> Paths:
        """Defaults under the project; IMAGING_INVENTORY, IMAGING_RELEASES, IMAGING_STATE override."""
        root = Path(root or os.environ.get("IMAGING_ROOT") or PROJECT_ROOT)
        env = os.environ.get
        return cls(
            root=root,
            inventory=Path(env("IMAGING_INVENTORY") or root / "instruments"),
            releases=Path(env("IMAGING_RELEASES") or root / "releases"),
            templates=Path(env("IMAGING_TEMPLATES") or root / "templates"),
            state=Path(env("IMAGING_STATE") or root / ".state"),
        )
