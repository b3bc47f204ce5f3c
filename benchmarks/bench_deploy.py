"""Benchmark: deploy the shipped fleet in the lab with --parallel=N against one instrument at a time.

Two identical lab projects are provisioned on the old release (not timed) with the new release staged
(as before a shutdown); then each deploys the new release to every instrument, one with the parallel
scheduler and one with --parallel=1. Both times and the ratio are printed.

The lab does a step in a few milliseconds of Python, so with no latency the deploy is CPU-bound in one
process and threads cannot beat one at a time on a small machine. A real step is a remote call that waits
(a WinRM round trip, a VM booting); ``--latency`` adds that wait to every step (a sleep in the lab's fault
hook), which is what the parallel scheduler overlaps. Both are measured: no latency, and the given one.

    .venv/bin/python benchmarks/bench_deploy.py [--parallel 8] [--latency 0.05] [--os-files 400] [--apps-files 300]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _lab import lab_project

from imaging.core.config import Paths
from imaging.engine import runner
from imaging.ops import deploy as deploys
from imaging.ops import facts
from imaging.ops import publish as publishing
from imaging.ops import stage as staging
from imaging.ops.context import Context

OLD, NEW = "2026C3.0", "2026C3.1"


def project(tmp: Path, name: str, sizes: tuple[int, int], latency: float) -> Context:
    proj = lab_project(tmp, name)
    paths = Paths(root=proj, inventory=proj / "instruments", releases=proj / "releases",
                  templates=proj / "templates", state=proj / ".state")
    ctx = Context.load(paths)
    ctx.sample_sizes = sizes
    insts = facts.select(ctx, everything=True)
    res = deploys.deploy(ctx, insts, OLD, runner.Options(parallel=8, canary=""))
    assert not res.summary.names("failed"), res.rows
    publishing.publish_for(ctx, NEW, {i.host for i in insts})  # as a facility does before a shutdown
    staging.stage_for(ctx, NEW, insts)
    ctx.close()
    ctx = Context.load(paths, fault=(lambda step: time.sleep(latency)) if latency else None)
    ctx.sample_sizes = sizes
    return ctx


def timed(ctx: Context, parallel: int) -> tuple[float, int]:
    insts = facts.select(ctx, everything=True)
    t0 = time.perf_counter()
    res = deploys.deploy(ctx, insts, NEW, runner.Options(parallel=parallel, batches="1,5,100%"))
    took = time.perf_counter() - t0
    assert len(res.summary.names("ok")) == len(insts), res.rows
    return took, len(insts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--latency", type=float, default=0.05, help="seconds added to every step")
    ap.add_argument("--os-files", type=int, default=400)
    ap.add_argument("--apps-files", type=int, default=300)
    args = ap.parse_args()
    sizes = (args.os_files, args.apps_files)
    print(f"images {args.os_files}+{args.apps_files} files, waves canary|1|5|rest, {os.cpu_count()} CPUs")
    for latency in (0.0, args.latency):
        with tempfile.TemporaryDirectory(prefix="imaging-bench-deploy-") as tmp:
            serial = project(Path(tmp), "serial", sizes, latency)
            par = project(Path(tmp), "parallel", sizes, latency)
            t_ser, n = timed(serial, 1)
            t_par, _ = timed(par, args.parallel)
        print(f"{n} instruments, {latency * 1000:.0f} ms per step: --parallel={args.parallel} {t_par:7.2f} s, "
              f"--parallel=1 {t_ser:7.2f} s, ratio (one at a time / parallel) {t_ser / t_par:.2f}x")


if __name__ == "__main__":
    main()
