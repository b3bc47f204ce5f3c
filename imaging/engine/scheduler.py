"""The deploy scheduler: waves, batch sizes, global and per-host limits, max-fail-percent and ordering.

Pure logic. It never touches a host: it asks a ``Runner`` to start a job and to report which jobs ended.
The same code drives real threads on the real clock (``imaging.engine.runner``) and a discrete-event simulation
on a virtual clock (``imaging.engine.simulate``), so a prediction exercises exactly the decisions a deploy makes.

Ordering within a wave: among the jobs that may start now (global limit and the host's own limit not
reached), the scheduler picks the job on the host with the most remaining work per slot (the host that
will finish last if starved), then the longest job. That is longest-processing-time-first, steered
towards the critical host, which keeps a wave's makespan near its lower bound.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from imaging.core.errors import InputError

OK, FAILED, SKIPPED, NOT_STARTED = "ok", "failed", "skipped", "not_started"
PULLED = "pulled"  # not an end: a running job reports that its host now holds the release's images


@dataclass(frozen=True)
class Job:
    """One instrument to deploy: where it runs and how long it is expected to take (for ordering)."""

    name: str
    host: str
    estimate: float = 1.0
    unstaged: bool = False  # the host lacks the images: the first job there pulls them from the share


@dataclass(frozen=True)
class Result:
    """How one job ended. ``skipped`` is not a failure (the instrument was busy, or already done)."""

    name: str
    status: str  # OK | FAILED | SKIPPED
    detail: str = ""
    step: str | None = None


class Runner(Protocol):
    """What the scheduler drives: real threads or a simulation."""

    def now(self) -> float: ...

    def start(self, job: Job) -> None:
        """Begin the job; it runs until ``wait`` reports it."""

    def wait(self) -> list[Result]:
        """Block until at least one started job has ended (or reported PULLED); return every such result since
        the last call."""


@dataclass(frozen=True)
class Batch:
    """A wave size: a count (``5``) or a share of the selection (``20%``)."""

    count: int | None = None
    percent: float | None = None

    def size(self, total: int) -> int:
        if self.count is not None:
            return self.count
        return max(1, math.ceil(total * (self.percent or 0) / 100))

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.percent:g}%"


_BATCH = re.compile(r"^(?:(\d+)|(\d+(?:\.\d+)?)%)$")


def parse_batches(spec: str) -> list[Batch]:
    """``"1,5,20%"`` -> [1, 5, 20%]. The last size repeats until every instrument has a wave."""
    out = []
    for part in [p.strip() for p in spec.split(",")]:
        m = _BATCH.match(part)
        if not m:
            raise InputError(f"batch size {part!r} is neither a count nor a percentage", field="--batches",
                             value=spec, fix="write sizes like --batches=1,5,20%")
        if m.group(1) is not None:
            n = int(m.group(1))
            if n < 1:
                raise InputError("a batch needs at least one instrument", field="--batches", value=spec,
                                 fix="use counts of 1 or more")
            out.append(Batch(count=n))
        else:
            p = float(m.group(2))
            if not 0 < p <= 100:
                raise InputError(f"batch share {part} is not between 0% and 100%", field="--batches", value=spec,
                                 fix="use shares like 20% or 100%")
            out.append(Batch(percent=p))
    return out


def plan_waves(jobs: list[Job], *, canary: str | None, batches: list[Batch]) -> list[list[Job]]:
    """Split the selection into waves: the canary alone, then batches of the given sizes.

    ``canary`` names the canary instrument; ``None`` means the first of the selection; ``""`` means none.
    Percentages are of the whole selection. Instruments keep their selection order across waves (so an
    operator can predict which wave an instrument is in); within a wave the scheduler orders by length.
    """
    rest = list(jobs)
    waves: list[list[Job]] = []
    if rest and canary != "":
        name = canary or rest[0].name
        pick = [j for j in rest if j.name == name]
        if not pick:
            raise InputError(f"canary {name} is not in the selection", field="--canary", value=name,
                             fix="choose an instrument that is being deployed")
        waves.append(pick)
        rest = [j for j in rest if j.name != name]
    sizes = batches or [Batch(percent=100)]
    i = 0
    while rest:
        n = sizes[min(i, len(sizes) - 1)].size(len(jobs))
        waves.append(rest[:n])
        rest = rest[n:]
        i += 1
    return waves


# A wave stops starting instruments once more than this share of it failed. A canary wave is one
# instrument, so a failed canary stops the run before any other instrument starts; 100 keeps going on purpose.
DEFAULT_MAX_FAIL_PERCENT = 10.0


def abort_rule(max_fail_percent: float, canary: str | None) -> str:
    """The rule a fleet run stops by, in the words its plan prints."""
    if max_fail_percent >= 100:
        return ("abort rule: none (--max-fail-percent=100): every instrument is started whatever fails before "
                "it")
    first = (f"the canary {canary} must succeed before any other instrument starts; after it, "
             if canary else "")
    return (f"abort rule: {first}a wave stops starting instruments once more than {max_fail_percent:g}% of it "
            f"failed (--max-fail-percent={max_fail_percent:g}; 100 keeps going)")


@dataclass(frozen=True)
class Limits:
    parallel: int
    per_host: dict[str, int]
    max_fail_percent: float = DEFAULT_MAX_FAIL_PERCENT
    pulls: int = 4  # hosts pulling images from the share at once (the share serves every host)

    def __post_init__(self) -> None:
        if self.parallel < 1:
            raise InputError("--parallel must be at least 1", field="--parallel", value=str(self.parallel),
                             fix="use --parallel=1 or more")
        if self.pulls < 1:
            raise InputError("--pulls must be at least 1", field="--pulls", value=str(self.pulls),
                             fix="use --pulls=1 or more")
        if not 0 <= self.max_fail_percent <= 100:
            raise InputError("--max-fail-percent must be between 0 and 100", field="--max-fail-percent",
                             value=str(self.max_fail_percent), fix="use a share like 10")


@dataclass(frozen=True)
class Event:
    """What the scheduler tells its observer: a wave began or ended, a job started or ended, it stopped."""

    kind: str  # wave_start | wave_end | job_start | job_end | stop
    time: float
    wave: int
    job: Job | None = None
    result: Result | None = None
    message: str = ""


@dataclass
class Summary:
    """Every instrument's outcome, per wave, and why the deploy stopped early (if it did)."""

    results: dict[str, Result] = field(default_factory=dict)
    started: dict[str, float] = field(default_factory=dict)
    ended: dict[str, float] = field(default_factory=dict)
    waves: list[list[str]] = field(default_factory=list)
    stopped: str | None = None
    start_time: float = 0.0
    end_time: float = 0.0

    def status(self, name: str) -> str:
        r = self.results.get(name)
        return r.status if r else NOT_STARTED

    def names(self, status: str) -> list[str]:
        return [n for w in self.waves for n in w if self.status(n) == status]

    @property
    def makespan(self) -> float:
        return self.end_time - self.start_time


def _too_many_failures(wave: list[Job], results: dict[str, Result], limit: float) -> bool:
    failed = sum(1 for j in wave if j.name in results and results[j.name].status == FAILED)
    return failed * 100 > limit * len(wave)


def run_waves(waves: list[list[Job]], runner: Runner, limits: Limits, *,
              done: dict[str, Result] | None = None,
              observe: Callable[[Event], None] | None = None) -> Summary:
    """Run the waves in order; the next wave starts only when the previous one ended healthy.

    ``done`` holds results from before (a resumed deploy): those jobs are not started again but count
    towards their wave's health. A wave is unhealthy when more than ``max_fail_percent`` of it failed: from
    that moment no new job starts, running ones finish, and the deploy stops.
    """
    emit = observe or (lambda ev: None)
    summary = Summary(waves=[[j.name for j in w] for w in waves], start_time=runner.now())
    summary.results.update(done or {})
    running: dict[str, Job] = {}
    per_host: dict[str, int] = {}
    pull = _Pulls(limits.pulls)
    for w, wave in enumerate(waves):
        pending = [j for j in wave if j.name not in summary.results]
        if not pending and not _too_many_failures(wave, summary.results, limits.max_fail_percent):
            continue
        emit(Event("wave_start", runner.now(), w, message=f"{len(pending)} to start"))
        stopped = _too_many_failures(wave, summary.results, limits.max_fail_percent)
        while True:
            if not stopped:
                for job in _startable(pending, running, per_host, limits, pull):
                    pull.started(job)
                    pending.remove(job)
                    running[job.name] = job
                    per_host[job.host] = per_host.get(job.host, 0) + 1
                    summary.started[job.name] = runner.now()
                    emit(Event("job_start", runner.now(), w, job=job))
                    runner.start(job)
            if not running:
                break
            for res in runner.wait():
                if res.status == PULLED:
                    pull.done(running[res.name].host)
                    continue
                job = running.pop(res.name)
                pull.ended(job)
                per_host[job.host] -= 1
                summary.results[res.name] = res
                summary.ended[res.name] = runner.now()
                emit(Event("job_end", runner.now(), w, job=job, result=res))
            if not stopped and _too_many_failures(wave, summary.results, limits.max_fail_percent):
                stopped = True
                failed = [j.name for j in wave if summary.status(j.name) == FAILED]
                summary.stopped = (f"wave {w + 1}: {len(failed)} of {len(wave)} failed ({', '.join(failed)}), "
                                   f"more than --max-fail-percent={limits.max_fail_percent:g}; no new instrument "
                                   "was started")
                emit(Event("stop", runner.now(), w, message=summary.stopped))
        emit(Event("wave_end", runner.now(), w))
        if stopped:
            if summary.stopped is None:
                summary.stopped = f"wave {w + 1} was already unhealthy when the deploy resumed"
            break
    summary.end_time = runner.now()
    return summary


@dataclass
class _Pulls:
    """Which hosts are pulling images and which have them. On a host without the images only the job that
    pulls runs until the pull is done (the others could only wait for it while holding slots), and at most
    ``limit`` hosts pull at once, so the share delivers whole hosts early instead of every host late."""

    limit: int
    pulling: dict[str, str] = field(default_factory=dict)  # host -> the job pulling
    pulled: set[str] = field(default_factory=set)

    def blocked(self, job: Job, extra: set[str]) -> bool:
        if not job.unstaged or job.host in self.pulled:
            return False
        return job.host in self.pulling or job.host in extra or len(self.pulling) + len(extra) >= self.limit

    def started(self, job: Job) -> None:
        if job.unstaged and job.host not in self.pulled:
            self.pulling[job.host] = job.name

    def done(self, host: str) -> None:
        self.pulling.pop(host, None)
        self.pulled.add(host)

    def ended(self, job: Job) -> None:
        if self.pulling.get(job.host) == job.name:  # ended without pulling (failed early): the next one pulls
            del self.pulling[job.host]


def _startable(pending: list[Job], running: dict[str, Job], per_host: dict[str, int], limits: Limits,
               pull: _Pulls) -> Iterable[Job]:
    """The jobs to start now, in priority order, within the global, per-host and share limits."""
    chosen: list[Job] = []
    busy = dict(per_host)
    new_pulls: set[str] = set()
    slots = limits.parallel - len(running)
    remaining: dict[str, float] = {}
    for j in pending:
        remaining[j.host] = remaining.get(j.host, 0.0) + j.estimate
    while slots > 0:
        best: Job | None = None
        best_key: tuple[float, float] | None = None
        for j in pending:
            if j in chosen or busy.get(j.host, 0) >= limits.per_host.get(j.host, 1) or pull.blocked(j, new_pulls):
                continue
            key = (remaining[j.host] / limits.per_host.get(j.host, 1), j.estimate)
            if best_key is None or key > best_key:
                best, best_key = j, key
        if best is None:
            break
        chosen.append(best)
        busy[best.host] = busy.get(best.host, 0) + 1
        if best.unstaged and best.host not in pull.pulled:
            new_pulls.add(best.host)
        remaining[best.host] -= best.estimate
        slots -= 1
    return chosen
