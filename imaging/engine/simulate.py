"""Predict a shutdown deploy: the real scheduler on a virtual clock, with a time model of the fleet.

A discrete-event simulation. Each instrument's reimage is a sequence of phases: staging (only when its
host lacks the images: a pull from the share, verified), VM stop, backup of Var, disk creation, boot,
guest configuration, health check. Transfers are fluid flows that share bandwidth fairly: every host's
disk and the one image share are resources, and a flow moves at the smallest fair share of the resources
it crosses. Fixed-time phases take their time. The scheduler (``imaging.engine.scheduler.run_waves``) decides
what starts when, exactly as on a real deploy.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from imaging.core.errors import InputError
from imaging.engine.scheduler import FAILED, OK, PULLED, Job, Limits, Result, Summary, run_waves

GB = 1e9
MB = 1e6


@dataclass(frozen=True)
class TimeModel:
    """Durations and throughputs. Defaults are conservative figures for a Hyper-V host with local SSDs and
    a 10 GbE file server; override any of them from a YAML file (``--model=FILE``)."""

    host_disk_mb_s: float = 400.0      # each host's storage, shared by everything on that host
    share_mb_s: float = 800.0          # the image share (file server), shared by every host
    os_image_gb: float = 25.0          # OS template size
    apps_image_gb: float = 15.0        # Apps master size
    var_backup_gb: float = 8.0         # Var volume copied by backup_volume before every reimage
    # What a switch's backup writes: the Var files changed since the last verified backup (the lab links the
    # rest from it). Hyper-V hosts copy all of Var today: give them var_backup_gb here (docs/deploy.md).
    switch_backup_gb: float = 1.0
    vm_stop_s: float = 60.0            # graceful guest shutdown
    disk_ops_s: float = 20.0           # differencing children, settings disk, attach/detach, locks
    switch_disk_ops_s: float = 5.0     # a switch's share of them: attach/detach and locks (the disks are made)
    switch_guest_s: float = 20.0       # a switch's guest step: a check (prepare wrote the configuration offline)
    vm_boot_s: float = 90.0            # start to guest answering PowerShell Direct
    guest_config_s: float = 120.0      # mount volumes by label, links, first-boot configuration
    health_check_s: float = 30.0
    undo_s: float = 180.0              # restoring the previous release after a failure (stop, reattach, boot)
    # Each instrument's own time outside its steps: reading what is there, rendering settings, planning
    # (`invoke calibrate` measures it; a few seconds on real hosts, where it is mostly reads in the guest).
    plan_s: float = 0.0
    staged: bool = True                # images staged beforehand (`invoke stage`): no pull during the deploy
    host_disk_overrides: dict[str, float] = field(default_factory=dict)  # per host name, MB/s

    @classmethod
    def load(cls, path: Path | None) -> TimeModel:
        """The defaults, overridden by the keys of a YAML mapping; an unknown key is an error."""
        if path is None:
            return cls()
        try:
            doc = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(f"cannot read the time model: {exc}", file=str(path),
                             fix="give a readable YAML mapping") from None
        if not isinstance(doc, dict):
            raise InputError("the time model must be a mapping", file=str(path), fix="write key: value lines")
        known = {f.name: f for f in fields(cls)}
        kw: dict[str, Any] = {}
        for key, value in doc.items():
            if key not in known:
                raise InputError("unknown time-model key", file=str(path), field=str(key),
                                 fix=f"use one of: {', '.join(sorted(known))}")
            if key == "host_disk_overrides":
                if not isinstance(value, dict) or not all(isinstance(v, int | float) and v > 0
                                                          for v in value.values()):
                    raise InputError("expected a mapping of host name to MB/s", file=str(path), field=key,
                                     fix="write e.g. host_disk_overrides: {HVHOST01: 250}")
                kw[key] = {str(k): float(v) for k, v in value.items()}
            elif key == "staged":
                if not isinstance(value, bool):
                    raise InputError("expected true or false", file=str(path), field=key, value=str(value),
                                     fix="write staged: true")
                kw[key] = value
            else:
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise InputError("expected a number of 0 or more", file=str(path), field=str(key),
                                     value=str(value), fix=f"write e.g. {key}: {getattr(cls(), key)}")
                kw[key] = float(value)
        return cls(**kw)

    def disk_bps(self, host: str) -> float:
        return self.host_disk_overrides.get(host, self.host_disk_mb_s) * MB

    @property
    def image_bytes(self) -> float:
        return (self.os_image_gb + self.apps_image_gb) * GB

    def fixed_s(self) -> float:
        return (self.plan_s + self.vm_stop_s + self.disk_ops_s + self.vm_boot_s + self.guest_config_s
                + self.health_check_s)

    def switch_s(self, host: str) -> float:
        """One instrument's switch to a prepared generation with nothing else running: its downtime."""
        return (self.plan_s + self.vm_stop_s + self.switch_backup_gb * GB / self.disk_bps(host) + self.switch_disk_ops_s
                + self.vm_boot_s + self.switch_guest_s + self.health_check_s)

    def prepare_s(self, host: str, *, staged: bool) -> float:
        """One instrument's prepare with nothing else running (no downtime: the instrument keeps running)."""
        t = self.plan_s + self.disk_ops_s - self.switch_disk_ops_s
        if not staged:
            t += self.image_bytes / min(self.disk_bps(host), self.share_mb_s * MB)
        return t

    def job_s(self, host: str, phase: str, *, staged: bool) -> float:
        """One instrument's work in ``phase`` (whole, prepare, switch) with nothing else running."""
        if phase == "switch":
            return self.switch_s(host)
        if phase == "prepare":
            return self.prepare_s(host, staged=staged)
        return self.alone_s(host, staged=staged)

    def alone_s(self, host: str, *, staged: bool) -> float:
        """One instrument's reimage with nothing else running (staging included when not staged)."""
        t = self.fixed_s() + self.var_backup_gb * GB / self.disk_bps(host)
        if not staged:
            t += self.image_bytes / min(self.disk_bps(host), self.share_mb_s * MB)
        return t


@dataclass
class _Flow:
    key: str                      # "<job>" or "stage:<host>"
    remaining: float              # bytes
    resources: tuple[str, ...]


@dataclass
class _Running:
    job: Job
    # (kind, argument, timeline phase): ("delay", seconds, p) | ("flow", (bytes, resources), p) | ("stage", host, p)
    phases: list[tuple[str, Any, str]]
    fail: bool
    current: tuple[str, float] | None = None  # the timeline phase under way and when it began


class SimRunner:
    """A ``scheduler.Runner`` on a virtual clock: jobs advance through their phases as events fire."""

    def __init__(self, model: TimeModel, *, staged_hosts: set[str] | None = None,
                 failing: set[str] | None = None, phase: str = "whole") -> None:
        self.model = model
        self.phase = phase
        self.t = 0.0
        self.staged = set(staged_hosts or ())
        self.failing = set(failing or ())
        self.jobs: dict[str, _Running] = {}
        self.flows: dict[str, _Flow] = {}
        self.timers: list[tuple[float, int, str]] = []  # (time, seq, job name)
        self.stage_waiters: dict[str, list[str]] = {}
        self.finished: list[Result] = []
        self.busy: dict[str, float] = {}  # resource -> seconds in use (for utilisation)
        self.trace: dict[str, list[tuple[str, float, float]]] = {}  # job -> (phase, start, end), as drawn
        self.work: dict[str, float] = {}  # resource -> bytes moved
        self._seq = 0

    def capacity(self, resource: str) -> float:
        kind, _, host = resource.partition(":")
        return self.model.share_mb_s * MB if kind == "share" else self.model.disk_bps(host)

    # --- Runner protocol ---------------------------------------------------------------------------
    def now(self) -> float:
        return self.t

    def start(self, job: Job) -> None:
        m = self.model
        phases: list[tuple[str, Any, str]] = [("delay", m.plan_s, "plan")]
        if job.host not in self.staged and self.phase != "switch":  # a switch finds everything prepared
            phases.append(("stage", job.host, "staging"))
        if self.phase == "prepare":  # the next generation's disks, beside the running instrument
            phases.append(("delay", m.disk_ops_s - m.switch_disk_ops_s, "disks"))
        elif self.phase == "switch":  # the downtime only
            phases += [("delay", m.vm_stop_s, "stop"),
                       ("flow", (m.switch_backup_gb * GB, (f"disk:{job.host}",)), "backup"),
                       ("delay", m.switch_disk_ops_s, "disks"), ("delay", m.vm_boot_s, "boot"),
                       ("delay", m.switch_guest_s, "guest"), ("delay", m.health_check_s, "check")]
        else:
            phases += [("delay", m.vm_stop_s, "stop"),
                       ("flow", (m.var_backup_gb * GB, (f"disk:{job.host}",)), "backup"),
                       ("delay", m.disk_ops_s, "disks"), ("delay", m.vm_boot_s, "boot"),
                       ("delay", m.guest_config_s, "guest"), ("delay", m.health_check_s, "check")]
        fail = job.name in self.failing
        if fail:
            phases.append(("delay", m.undo_s, "undo"))
        self.jobs[job.name] = _Running(job, phases, fail)
        self._next_phase(job.name)

    def wait(self) -> list[Result]:
        while not self.finished:
            if not self.jobs:
                raise RuntimeError("wait() with nothing running")
            self._advance()
        out, self.finished = self.finished, []
        return out

    # --- the event loop ----------------------------------------------------------------------------
    def _next_phase(self, name: str) -> None:
        run = self.jobs[name]
        if run.current is not None:  # the phase that just ended, for the timeline
            self.trace.setdefault(name, []).append((run.current[0], run.current[1], self.t))
            run.current = None
        while run.phases:
            kind, arg, label = run.phases.pop(0)
            if kind == "delay":
                if arg <= 0:
                    continue
                self._seq += 1
                heapq.heappush(self.timers, (self.t + arg, self._seq, name))
            elif kind == "flow":
                size, resources = arg
                if size <= 0:
                    continue
                self.flows[name] = _Flow(name, size, resources)
            elif kind == "stage":
                if arg in self.staged:
                    continue
                self.stage_waiters.setdefault(arg, []).append(name)
                key = f"stage:{arg}"
                if key not in self.flows:
                    self.flows[key] = _Flow(key, self.model.image_bytes, ("share", f"disk:{arg}"))
            run.current = (label, self.t)
            return
        del self.jobs[name]
        if run.fail:
            self.finished.append(Result(name, FAILED, "failed in the simulation (time model `failing`)",
                                        step="health_check"))
        else:
            self.finished.append(Result(name, OK))

    def _rates(self) -> dict[str, float]:
        users: dict[str, int] = {}
        for f in self.flows.values():
            for r in f.resources:
                users[r] = users.get(r, 0) + 1
        return {k: min(self.capacity(r) / users[r] for r in f.resources) for k, f in self.flows.items()}

    def _advance(self) -> None:
        rates = self._rates()
        t_next = self.timers[0][0] if self.timers else float("inf")
        for k, f in self.flows.items():
            t_next = min(t_next, self.t + f.remaining / rates[k])
        if t_next == float("inf"):
            raise RuntimeError("simulation stalled: nothing can progress")
        dt = t_next - self.t
        in_use: set[str] = set()
        done_flows = []
        for k, f in self.flows.items():
            moved = rates[k] * dt
            f.remaining -= moved
            for r in f.resources:
                in_use.add(r)
                self.work[r] = self.work.get(r, 0.0) + moved
            if f.remaining <= 1e-6 * max(1.0, rates[k]):
                done_flows.append(k)
        for r in in_use:
            self.busy[r] = self.busy.get(r, 0.0) + dt
        self.t = t_next
        for k in done_flows:
            del self.flows[k]
            if k.startswith("stage:"):
                host = k.partition(":")[2]
                self.staged.add(host)
                for name in self.stage_waiters.pop(host, []):
                    self.finished.append(Result(name, PULLED, host))
                    self._next_phase(name)
            else:
                self._next_phase(k)
        while self.timers and self.timers[0][0] <= self.t + 1e-9:
            _, _, name = heapq.heappop(self.timers)
            self._next_phase(name)


@dataclass
class Prediction:
    summary: Summary
    makespan: float
    lower_bound: float
    bound_resource: str
    utilisation: dict[str, float]   # resource -> busy share of the makespan
    slot_use: dict[str, float]      # host -> average busy slots / limit
    parallel_use: float = 0.0       # average running instruments / --parallel
    phase: str = "whole"            # whole (reimage), prepare or switch
    downtime_max: float = 0.0       # the longest any instrument is down (0 for a prepare: nothing is down)
    downtime_mean: float = 0.0
    trace: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)  # job -> (phase, start, end)

    def critical(self) -> tuple[str, float]:
        """The resource closest to saturation over the run, and how busy it was."""
        return critical_resource(self)


def lower_bound(jobs: list[Job], model: TimeModel, limits: Limits, *, staged_hosts: set[str],
                phase: str = "whole") -> tuple[float, str]:
    """The larger of: the busiest resource's total work over its capacity, and the longest instrument.
    A switch moves no image (everything was prepared) and a prepare backs nothing up."""
    hosts = {j.host for j in jobs}
    staged_hosts = hosts if phase == "switch" else staged_hosts

    def work(h: str) -> float:  # one instrument's slot time on host h, staging aside
        return model.job_s(h, phase, staged=True)

    cands: dict[str, float] = {}
    share = sum(model.image_bytes for h in hosts if h not in staged_hosts)
    cands["image share"] = share / (model.share_mb_s * MB)
    backup = {"prepare": 0.0, "switch": model.switch_backup_gb}.get(phase, model.var_backup_gb) * GB
    for h in hosts:
        mine = [j for j in jobs if j.host == h]
        disk = backup * len(mine) + (0 if h in staged_hosts else model.image_bytes)
        cands[f"disk {h}"] = disk / model.disk_bps(h)
        # slot-seconds: staging is shared by the host's instruments, so count it once
        cands[f"slots {h}"] = sum(work(h) for _ in mine) / limits.per_host.get(h, 1)
    unstaged = [h for h in hosts if h not in staged_hosts]
    if unstaged:
        # the host whose pull ends last (not before the share has delivered everything) still has all of
        # its instruments' work ahead of it
        tail = min(max(sum(work(h) for j in jobs if j.host == h) / limits.per_host.get(h, 1), work(h))
                   for h in unstaged)
        cands["image share, then the last host's work"] = cands["image share"] + tail
    cands["--parallel"] = sum(work(j.host) for j in jobs) / limits.parallel
    cands["longest instrument"] = max(model.job_s(j.host, phase, staged=j.host in staged_hosts) for j in jobs)
    name = max(cands, key=lambda k: cands[k])
    return cands[name], name


def predict(waves: list[list[Job]], model: TimeModel, limits: Limits, *, staged_hosts: set[str] | None = None,
            failing: set[str] | None = None, phase: str = "whole") -> Prediction:
    """Run the real scheduler over the waves on the virtual clock; return the predicted makespan and more.

    ``staged_hosts``: the hosts known to hold the images; None means "as the model's ``staged`` says"."""
    if staged_hosts is None:  # nothing observed: the model's assumption holds for every host
        staged = {j.host for w in waves for j in w} if model.staged else set()
    else:
        staged = set(staged_hosts)
    runner = SimRunner(model, staged_hosts=staged, failing=failing, phase=phase)
    slot_time: dict[str, float] = {}

    summary = run_waves(waves, runner, limits)
    for name, t0 in summary.started.items():
        host = next(j.host for w in waves for j in w if j.name == name)
        slot_time[host] = slot_time.get(host, 0.0) + summary.ended.get(name, summary.end_time) - t0
    span = summary.makespan or 1e-9
    # Waves run one after another, so the bound is the sum of each wave's own (a canary alone adds its
    # whole length); named by the largest wave's reason. Staging happens once, in the first wave that needs it.
    parts, pulled = [], set(staged)
    for wave in (w for w in waves if w):
        b, why = lower_bound(wave, model, limits, staged_hosts=pulled, phase=phase)
        pulled |= {j.host for j in wave}
        parts.append((b, why, len(wave)))
    bound = sum(b for b, _, _ in parts)
    _, why, size = max(parts)
    what = why if len(parts) == 1 else f"{why} in the wave of {size}, plus {len(parts) - 1} other wave(s)"
    # Downtime: a switch's or a reimage's whole job (its VM is off from the stop to the check); none in a prepare.
    down = [summary.ended.get(n, summary.end_time) - t0 for n, t0 in summary.started.items()]
    down = [] if phase == "prepare" else down
    util = {r: b / span for r, b in sorted(runner.busy.items())}
    slots = {h: s / span / limits.per_host.get(h, 1) for h, s in sorted(slot_time.items())}
    return Prediction(summary=summary, makespan=summary.makespan, lower_bound=bound, bound_resource=what,
                      utilisation=util, slot_use=slots,
                      parallel_use=sum(slot_time.values()) / span / limits.parallel, phase=phase,
                      downtime_max=max(down, default=0.0), downtime_mean=sum(down) / len(down) if down else 0.0,
                      trace=dict(runner.trace))


def critical_resource(p: Prediction) -> tuple[str, float]:
    """The resource closest to saturation over the run: a disk, the share, a host's slots."""
    cands = {f"{k} bandwidth": v for k, v in p.utilisation.items()}
    cands.update({f"slots {h}": v for h, v in p.slot_use.items()})
    cands["--parallel"] = p.parallel_use
    if not cands:
        return "none", 0.0
    k = max(cands, key=lambda x: cands[x])
    return k, cands[k]
