"""The plan types: what a host showed (``Observed``), an image a plan uses (``Artifact``), and the ``Plan``
itself, the ordered, printable steps one operation performs on one instrument.

Planners (``imaging.plans``) build plans from these and the inventory; the executor carries them out, and
every step carries its own undo.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imaging.model.steps import Step

STOP_TIMEOUT_S = 300
GUEST_TIMEOUT_S = 600
BACKUPS_KEPT = 3
RECORD_FILE = "imaging/record.json"
SETTINGS_MANIFEST = ".imaging/manifest.json"


@dataclass(frozen=True)
class Observed:
    """What the provider saw on the host before planning (a read, never a change)."""

    exists: bool
    power: str  # Running | Off | Absent
    disks: dict[int, str]  # slot -> Windows path
    parents: dict[int, str | None] = field(default_factory=dict)  # slot -> parent image of a differencing disk

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Observed:
        return cls(exists=bool(state.get("exists")), power=str(state.get("power", "Absent")),
                   disks={int(d["slot"]): d["path"] for d in state.get("disks", [])},
                   parents={int(d["slot"]): d.get("parent") for d in state.get("disks", [])})


@dataclass(frozen=True)
class Artifact:
    name: str
    sha256: str
    size: int
    suffix: str = ".vhdx"


@dataclass
class Plan:
    kind: str
    instrument: str
    vm: str
    host: str
    from_release: str | None
    to_release: str | None
    steps: list[Step]
    notes: list[str] = field(default_factory=list)
    rollback_point: dict[str, Any] = field(default_factory=dict)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.steps]

    def describe(self) -> list[str]:
        return [f"{i + 1:2d}. {s.summary}" for i, s in enumerate(self.steps)]


def generation(release: str, op_id: str) -> str:
    return f"{release}-{op_id[:8]}"
