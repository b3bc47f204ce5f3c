"""Everything one invocation works with, loaded and validated once before anything acts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from imaging.core.config import Paths
from imaging.engine.executor import Executor, Listener
from imaging.engine.runner import Where
from imaging.model.inventory import Inventory, load_inventory
from imaging.model.labels import load_labels
from imaging.model.releases import ReleaseDefinition, load_releases
from imaging.providers.base import StepHook
from imaging.providers.dispatcher import Dispatcher
from imaging.state.bad_releases import BadReleases
from imaging.state.builds import BuildRecords
from imaging.state.journal import Journal
from imaging.state.runs import RunRecords
from imaging.state.store import ArtifactStore

LAB_OS_FILES = 400
LAB_APPS_FILES = 300


@dataclass
class Context:
    """The inventory, releases and labels (validated), the state (journal, store, records) and the providers."""

    paths: Paths
    inventory: Inventory
    releases: dict[str, ReleaseDefinition]
    labels: dict[str, dict[str, str]]
    store: ArtifactStore
    providers: Dispatcher
    sample_sizes: tuple[int, int] = (LAB_OS_FILES, LAB_APPS_FILES)
    _journal: Journal | None = None

    @classmethod
    def load(cls, paths: Paths | None = None, *, fault: StepHook | None = None) -> Context:
        """Load and validate; ``fault`` is handed to the providers (the lab calls it before every step)."""
        paths = paths or Paths.from_env()
        inventory = load_inventory(paths.inventory)
        releases = load_releases(paths.releases)
        labels = load_labels(paths.releases)
        return cls(paths=paths, inventory=inventory, releases=releases, labels=labels,
                   store=ArtifactStore(paths.store), providers=Dispatcher(inventory, paths.lab, fault=fault))

    def close(self) -> None:
        self.providers.close()

    def executor(self, listener: Listener | None = None) -> Executor:
        return Executor(self.providers, self.journal, self.paths.locks, listener)

    @property
    def journal(self) -> Journal:
        """Opened on first use, so that commands that only read files (render, validate) create nothing."""
        if self._journal is None:
            self._journal = Journal(self.paths.journal)
        return self._journal

    @property
    def runs(self) -> RunRecords:
        return RunRecords(self.paths.runs)

    @property
    def bad(self) -> BadReleases:
        return BadReleases(self.paths.bad_releases)

    @property
    def builds(self) -> BuildRecords:
        return BuildRecords(self.paths.builds)

    @property
    def fleet_folders(self) -> Where:
        """Where the fleet runner keeps a run's record, guards and reports."""
        return Where(records=self.runs, locks=self.paths.locks, reports=self.paths.reports, journal=self.journal)

    @property
    def per_host_limits(self) -> dict[str, int]:
        return {h.name: h.max_concurrent for h in self.inventory.hosts.values()}


def load_context(root: Path | None = None) -> Context:
    return Context.load(Paths.from_env(root))
