"""Benchmark: two-phase deploys. How long is the shutdown window, and how long is each instrument down?

1. The shipped fleet (34 instruments on 6 hosts, the inventory's own host limits) on the default time
   model, with `invoke switch`'s defaults (a canary, then the rest; --parallel=16): the predicted switch
   window, each instrument's downtime, and the lower bound (the sum of each wave's bound: the busiest of a
   host's slots and disk, --parallel, the longest instrument) with what sets it. The whole reimage
   (`invoke deploy`'s defaults) is printed beside it. Targets: window under 15 min, every instrument down
   under 4 min, window within 1.15x of the bound.
2. A synthetic 300-instrument, 40-host fleet: the same figures, and the simulation's wall time (target:
   under 10 s).
3. On the lab: one prepared instrument's switch against a full reimage of an identical instrument, run
   side by side (alternating, several rounds): the time inside the downtime (from the stop to the record)
   of each, and their ratio.

    .venv/bin/python benchmarks/bench_switch.py [--rounds 3] [--os-files 400] [--apps-files 300]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _lab import lab_project

from imaging.core.config import Paths
from imaging.engine.runner import Options, limits_for
from imaging.engine.scheduler import Job, Limits, parse_batches, plan_waves
from imaging.engine.simulate import TimeModel, predict
from imaging.ops import deploy as deploys
from imaging.ops import facts
from imaging.ops import prepare as preparing
from imaging.ops import reimage as reimaging
from imaging.ops import switch as switching
from imaging.ops.context import Context
from imaging.ops.switch import SWITCH_PARALLEL

OLD, NEW = "2026C3.0", "2026C3.1"


def show(label: str, p, wall: float | None = None) -> None:  # noqa: ANN001
    extra = f", simulated in {wall:.2f} s" if wall is not None else ""
    print(f"{label}: window {p.makespan / 60:5.1f} min, bound {p.lower_bound / 60:5.1f} min "
          f"({p.bound_resource}), ratio {p.makespan / p.lower_bound:.3f}; down {p.downtime_mean / 60:.2f} min on "
          f"average, {p.downtime_max / 60:.2f} at most{extra}")


def shipped() -> None:
    ctx = Context.load(Paths.from_env(ROOT))
    insts = facts.select(ctx, everything=True)
    model = TimeModel()
    show(f"shipped fleet, {len(insts)} instruments, switch", switching.simulate(
        ctx, insts, Options(parallel=SWITCH_PARALLEL), model))
    show(f"shipped fleet, {len(insts)} instruments, reimage", deploys.simulate(ctx, insts, NEW, Options(), model))
    show(f"shipped fleet, {len(insts)} instruments, reimage --parallel=16",
         deploys.simulate(ctx, insts, NEW, Options(parallel=16), model))
    p = preparing.simulate(ctx, insts, NEW, Options(), TimeModel(staged=False))
    print(f"shipped fleet, prepare (images not staged yet): {p.makespan / 60:.1f} min, nobody down, bound "
          f"{p.lower_bound / 60:.1f} min ({p.bound_resource})")
    print(f"  per-host limits: {limits_for(ctx.per_host_limits, Options()).per_host}")


def synthetic(n: int, hosts: int, parallel: int, host_limit: int) -> None:
    model = TimeModel()
    names = [f"H{h:02d}" for h in range(hosts)]
    jobs = [Job(f"I{i:03d}", names[i % hosts], model.switch_s(names[i % hosts])) for i in range(n)]
    limits = Limits(parallel=parallel, per_host={h: host_limit for h in names})
    waves = plan_waves(jobs, canary=None, batches=parse_batches("100%"))
    t0 = time.perf_counter()
    p = predict(waves, model, limits, phase="switch")
    show(f"{n} instruments on {hosts} hosts, switch, --parallel={parallel}", p, time.perf_counter() - t0)


def downtime(ctx: Context, op_id: str) -> float:
    """From the start of stop_vm to the end of write_record, by the journal's own clock."""
    steps = {s.action: s for s in ctx.journal.steps(op_id) if s.phase == "do"}
    t0 = datetime.fromisoformat(steps["stop_vm"].started)
    t1 = datetime.fromisoformat(steps["write_record"].ended)
    return (t1 - t0).total_seconds()


def lab(rounds: int, sizes: tuple[int, int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proj = lab_project(Path(tmp))
        ctx = Context.load(Paths.from_env(proj))
        ctx.sample_sizes = sizes
        a, b = ctx.inventory.instrument("ZOOM"), ctx.inventory.instrument("WISH")
        switch_s, reimage_s = [], []
        for r in range(rounds):
            old, new = (OLD, NEW) if r % 2 == 0 else (NEW, OLD)
            if r == 0:
                for inst in (a, b):
                    assert reimaging.reimage(ctx, inst.name, old).ok
            assert preparing.prepare(ctx, a, new, force=True).outcome.ok
            first = [("switch", lambda: switching.switch(ctx, a)),
                     ("reimage", lambda new=new: reimaging.reimage(ctx, b.name, new, force=True))]
            for kind, run in (first if r % 2 == 0 else first[::-1]):
                out = run()
                assert out.ok, out
                (switch_s if kind == "switch" else reimage_s).append(downtime(ctx, out.op_id))
        ctx.close()
    s, m = sorted(switch_s)[len(switch_s) // 2], sorted(reimage_s)[len(reimage_s) // 2]
    print(f"lab, {rounds} rounds side by side: downtime work of a switch {s * 1000:.0f} ms, of a reimage "
          f"{m * 1000:.0f} ms (medians), ratio {m / s:.2f}x less inside the downtime")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--os-files", type=int, default=400)
    ap.add_argument("--apps-files", type=int, default=300)
    args = ap.parse_args()
    shipped()
    synthetic(300, 40, 64, 3)
    lab(args.rounds, (args.os_files, args.apps_files))


if __name__ == "__main__":
    main()
