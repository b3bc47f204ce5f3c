"""What every provider offers: carry out one step, idempotently, and answer the few questions that only the
provider of a host can answer without a step (orchestration never asks which provider a host has)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from imaging.model.steps import Step

StepHook = Callable[[Step], Callable[[], None] | None]
"""Called with every step before the lab carries it out (tests and rehearsals inject faults and delays);
what it returns, if anything, is called once the step's work is done (a kill "after" the step)."""


class Provider(Protocol):
    """Carries out steps. ``run`` checks before it changes; its result always holds ``changed``."""

    name: str

    # Images missing from the store are made on first use from the built-in samples (the lab only: a real
    # host must run what the facility built).
    sample_images: bool

    def run(self, step: Step) -> dict[str, Any]: ...

    def close(self) -> None: ...

    def share_folder(self, host: str, share_path: str) -> Path | None:
        """The local folder that is ``host``'s image share, where this machine can fill it; else None."""
        ...

    def staged(self, host: str, image_path: str, sha256: str) -> bool | None:
        """Whether the image is staged and verified on the host; None when it cannot be seen without a
        host call."""
        ...

    def trust(self, host: str) -> str | None:
        """What validates the host's TLS certificate, in a sentence; None where no network is involved."""
        ...
