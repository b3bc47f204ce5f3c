"""Faults the lab produces on purpose, for tests and rehearsals: a step that fails, or the process killed
before, during or after a step (as a power cut or `kill -9` would), named in ``IMAGING_LAB_FAULTS``.

``NDXZOOM:health_check``            fail that action on that VM (``*`` for any VM)
``NDXZOOM:attach_disk#2@kill-after`` kill the process (SIGKILL) once the second attach_disk has done its work
``NDXZOOM:create_disk@kill-before``  ... just before it starts
``NDXZOOM:stage_artifact@kill-during`` ... in the middle of its work: at its third change to a file (an
                                       open for writing, a rename, a removal), or after it if it makes fewer
``NDXZOOM:attach_disk@fill``          fill the host's storage just before that step (a ``.filler`` file in each
                                       of the host's drive folders that is a mount point of its own, such as a
                                       small tmpfs: a drive on the machine's own disk is never filled)
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imaging.core.errors import InputError, ProviderError
from imaging.model.steps import Step

KILL_POSITIONS = ("before", "during", "after")
FILLER = ".filler"
DURING_AT = 3  # the change to a file at which a kill "during" a step lands

# Audit events that change files: the lab's own writes all pass through one of these.
_CHANGES = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.link", "os.symlink", "os.truncate",
            "shutil.copyfile", "shutil.rmtree", "os.chmod"}


class InjectedFault(ProviderError):
    """A failure the lab was told to produce (tests and rehearsals)."""


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class _DuringKill:
    """Kills the process at the n-th file change made while armed (one audit hook per process, installed
    on first use: audit hooks cannot be removed, so it is inert when disarmed)."""

    _installed = False
    _lock = threading.Lock()
    armed: int | None = None  # the thread whose changes count
    seen = 0

    @classmethod
    def arm(cls) -> None:
        with cls._lock:
            if not cls._installed:
                sys.addaudithook(cls._hook)
                cls._installed = True
            cls.armed, cls.seen = threading.get_ident(), 0

    @classmethod
    def _hook(cls, event: str, args: tuple) -> None:
        if cls.armed != threading.get_ident():
            return
        writes = event == "open" and (
            (isinstance(args[1], str) and any(m in args[1] for m in "wax+"))
            or (args[1] is None and isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR)))
        if writes or event in _CHANGES:
            cls.seen += 1
            if cls.seen >= DURING_AT:
                _die()


@dataclass
class _Rule:
    vm: str
    action: str
    nth: int | None  # the n-th step of this action (counted per process); None: every one
    kill: str | None  # None: fail the step with InjectedFault; "fill": fill the host's storage
    count: int = field(default=0)


def _parse(item: str, spec: str) -> _Rule:
    vm, _, rest = item.partition(":")
    rest, _, kill = rest.partition("@")
    action, _, nth = rest.partition("#")
    if kill and kill != "fill" and kill.removeprefix("kill-") not in KILL_POSITIONS or not vm or not action \
            or (nth and not nth.isdigit()):
        raise InputError(f"cannot read the fault {item!r}", field="IMAGING_LAB_FAULTS", value=spec,
                         fix="write VM:action, VM:action#N, VM:action@kill-before|during|after or VM:action@fill, "
                             "comma-separated")
    return _Rule(vm.upper(), action, int(nth) if nth else None, kill.removeprefix("kill-") if kill else None)


def fill(host_dir: Path) -> list[Path]:
    """Fill every drive folder of a lab host that is a file system of its own; the machine's disk never."""
    filled = []
    for drive in sorted(p for p in host_dir.iterdir() if p.is_dir()):
        if not os.path.ismount(drive):
            continue
        fd = os.open(drive / FILLER, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            for size in (1 << 20, 4096, 512):  # big blocks, then the last few, until not one more fits
                block = b"\0" * size
                try:
                    while True:
                        os.write(fd, block)
                except OSError:
                    pass
        finally:
            os.close(fd)
        filled.append(drive)
    if not filled:
        raise InputError(f"no drive folder of {host_dir} is a mount point of its own", field="IMAGING_LAB_FAULTS",
                         fix="mount a small file system (tmpfs) on the host's drive folder; the lab never fills "
                             "the machine's own disk")
    return filled


def faults_from_env(spec: str | None, lab: Path | None = None) -> Callable[[Step], Callable[[], None] | None] | None:
    """The step hook for ``IMAGING_LAB_FAULTS`` (see the module's docstring); None when it is empty. ``lab``
    is the lab's folder, where ``@fill`` finds the hosts' drives."""
    if not spec:
        return None
    rules = [_parse(item.strip(), spec) for item in spec.split(",") if item.strip()]
    guard = threading.Lock()

    def hook(step: Step) -> Callable[[], None] | None:
        vm = str(step.inputs.get("vm", "")).upper()
        for rule in rules:
            if rule.action != step.action or rule.vm not in (vm, "*"):
                continue
            with guard:
                rule.count += 1
                hit = rule.nth is None or rule.count == rule.nth
            if not hit:
                continue
            if rule.kill is None:
                raise InjectedFault(f"injected failure of {step.action} on {vm}", host=step.host, step=step.action)
            if rule.kill == "fill":
                if lab is None:
                    raise InputError("@fill needs the lab's folder", field="IMAGING_LAB_FAULTS", value=spec,
                                     fix="run through the dispatcher, which knows the lab folder")
                fill(lab / "hosts" / step.host)
                return None
            if rule.kill == "before":
                _die()
            if rule.kill == "during":
                _DuringKill.arm()
            return _die
        return None

    return hook
