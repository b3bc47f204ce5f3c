"""The dispatcher: each step goes to the provider of its host (`lab` on a local folder, `hyperv` over PowerShell
remoting)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from imaging.core.errors import ProviderError
from imaging.model.inventory import Inventory
from imaging.model.steps import Step
from imaging.providers.base import Provider, StepHook
from imaging.providers.lab.faults import faults_from_env
from imaging.providers.lab.provider import LabProvider


class Dispatcher:
    """Sends each step to the provider of its host; one provider object (and its sessions) per kind."""

    name = "dispatcher"

    def __init__(self, inventory: Inventory, lab: Path, *, fault: StepHook | None = None,
                 providers: dict[str, Provider] | None = None) -> None:
        """``providers`` (by kind) replaces the ones made from the inventory: a session pool pointed at a test
        endpoint, for example."""
        self.inventory = inventory
        self._lab_dir = lab
        self._fault = fault if fault is not None else faults_from_env(os.environ.get("IMAGING_LAB_FAULTS"),
                                                                                  lab)
        self._providers: dict[str, Provider] = dict(providers or {})
        self._guard = threading.RLock()

    def for_host(self, host: str) -> Provider:
        try:
            kind = self.inventory.hosts[host].provider
        except KeyError:
            raise ProviderError(f"unknown host {host}") from None
        with self._guard:
            return self._provider(kind)

    def _provider(self, kind: str) -> Provider:
        if kind not in self._providers:
            if kind == "lab":
                lab = LabProvider(self._lab_dir, fault=self._fault)
                lab.install_hosts([h for h in self.inventory.hosts.values() if h.provider == "lab"])
                self._providers[kind] = lab
            else:
                from imaging.providers.hyperv.provider import HypervProvider

                self._providers[kind] = HypervProvider.from_inventory(self.inventory)
        return self._providers[kind]

    @property
    def lab(self) -> LabProvider:
        with self._guard:
            return self._provider("lab")  # type: ignore[return-value]

    def run(self, step: Step) -> dict[str, Any]:
        return self.for_host(step.host).run(step)

    def sample_images(self, host: str) -> bool:
        return self.for_host(host).sample_images

    def share_folder(self, host: str, share_path: str) -> Path | None:
        return self.for_host(host).share_folder(host, share_path)

    def staged(self, host: str, image_path: str, sha256: str) -> bool | None:
        return self.for_host(host).staged(host, image_path, sha256)

    def trust(self, host: str) -> str | None:
        return self.for_host(host).trust(host)

    def close(self) -> None:
        for p in self._providers.values():
            p.close()
