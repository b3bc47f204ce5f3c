"""What every provider offers: carry out one step, idempotently, and say whether it changed anything."""

from __future__ import annotations

from typing import Any, Protocol

from imaging.model.steps import Step


class Provider(Protocol):
    """Carries out steps. ``run`` checks before it changes; its result always holds ``changed``."""

    name: str

    def run(self, step: Step) -> dict[str, Any]: ...

    def close(self) -> None: ...
