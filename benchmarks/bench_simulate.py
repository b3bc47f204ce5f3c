"""Benchmark: the deploy prediction against a lower bound, and how long the simulation itself takes.

Two synthetic fleets (30 instruments on 6 hosts; 300 on 40 hosts), each simulated with the real scheduler
on the default time model, staged and not staged. The lower bound is the larger of the busiest resource's
total work over its capacity (each host's disk, the image share, each host's slots, --parallel) and the
longest single instrument. Target: makespan within 1.15x of the bound in one wave, and under 10 s of wall
time for 300 instruments. With waves (canary, 1, 5, 20%) the bound per wave is summed, since a wave cannot
start before the previous one ends.

    .venv/bin/python benchmarks/bench_simulate.py [--parallel-small 8] [--parallel-large 64] [--host-limit 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imaging.engine.scheduler import Job, Limits, parse_batches, plan_waves
from imaging.engine.simulate import TimeModel, critical_resource, lower_bound, predict


def fleet(n: int, hosts: int, model: TimeModel, *, staged: bool) -> list[Job]:
    names = [f"H{h:02d}" for h in range(hosts)]
    # uneven hosts, as in a real facility: every fifth host has slower disks
    return [Job(f"I{i:03d}", names[i % hosts], model.alone_s(names[i % hosts], staged=staged),
                unstaged=not staged)
            for i in range(n)]


def run(n: int, hosts: int, parallel: int, host_limit: int) -> None:
    slow = {f"H{h:02d}": 250.0 for h in range(0, hosts, 5)}
    for staged in (True, False):
        model = TimeModel(staged=staged, host_disk_overrides=slow)
        jobs = fleet(n, hosts, model, staged=staged)
        limits = Limits(parallel=parallel, per_host={f"H{h:02d}": host_limit for h in range(hosts)})
        t0 = time.perf_counter()
        p = predict(plan_waves(jobs, canary="", batches=[]), model, limits)
        wall = time.perf_counter() - t0
        crit, busy = critical_resource(p)
        print(f"{n:4d} instruments, {hosts:2d} hosts, --parallel={parallel}, staged={staged!s:5}: "
              f"predicted {p.makespan / 60:7.1f} min, bound {p.lower_bound / 60:7.1f} min ({p.bound_resource}), "
              f"ratio {p.makespan / p.lower_bound:.3f}, simulation {wall:.2f} s, critical {crit} ({busy:.0%})")
        waves = plan_waves(jobs, canary=None, batches=parse_batches("1,5,20%"))
        t0 = time.perf_counter()
        pw = predict(waves, model, limits)
        wall = time.perf_counter() - t0
        staged_hosts = {j.host for j in jobs} if staged else set()
        done: set[str] = set()
        wave_bound = 0.0
        for w in waves:  # a host staged by an earlier wave is staged for the later ones
            wave_bound += lower_bound(w, model, limits, staged_hosts=staged_hosts | done)[0]
            done |= {j.host for j in w}
        print(f"{'':4s}   with waves 1|1|5|20%...: predicted {pw.makespan / 60:7.1f} min, summed wave bounds "
              f"{wave_bound / 60:7.1f} min, ratio {pw.makespan / wave_bound:.3f}, simulation {wall:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parallel-small", type=int, default=8)
    ap.add_argument("--parallel-large", type=int, default=64)
    ap.add_argument("--host-limit", type=int, default=3)
    args = ap.parse_args()
    run(30, 6, args.parallel_small, args.host_limit)
    run(300, 40, args.parallel_large, args.host_limit)


if __name__ == "__main__":
    main()
