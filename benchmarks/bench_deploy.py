"""Benchmark: deploy the shipped fleet in the lab with --parallel=N against one instrument at a time.

Two identical lab projects are provisioned on the old release (not timed) with the new release staged
(as before a shutdown); then each deploys the new release to every instrument, one with the parallel
scheduler and one with --parallel=1. Both times and the ratio are printed. The lab serialises work per
host (as a host's disk would) and runs in one Python process, so the ratio is bounded by the hosts'
limits and the CPUs of this machine, not by the scheduler.

    .venv/bin/python benchmarks/bench_deploy.py [--parallel 8] [--os-files 400] [--apps-files 300]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from imaging import fleet, operations  # noqa: E402
from imaging.config import Paths  # noqa: E402

OLD, NEW = "2026C3.0", "2026C3.1"


def project(tmp: Path, name: str, sizes: tuple[int, int]) -> operations.Context:
    proj = tmp / name
    proj.mkdir()
    for d in ("instruments", "releases", "templates"):
        shutil.copytree(ROOT / d, proj / d)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "bench"]):
        subprocess.run(["git", "-C", str(proj), *cmd], check=True, env=env)
    ctx = operations.Context.load(Paths(root=proj, inventory=proj / "instruments", releases=proj / "releases",
                                        templates=proj / "templates", state=proj / ".state"))
    ctx.sample_sizes = sizes
    insts = fleet.select(ctx, everything=True)
    res = fleet.deploy(ctx, insts, OLD, fleet.Options(parallel=8, canary=""))
    assert not res.summary.names("failed"), res.rows
    for host in sorted({i.host for i in insts}):
        operations.stage(ctx, NEW, host)
    return ctx


def timed(ctx: operations.Context, parallel: int) -> tuple[float, int]:
    insts = fleet.select(ctx, everything=True)
    t0 = time.perf_counter()
    res = fleet.deploy(ctx, insts, NEW, fleet.Options(parallel=parallel, batches="1,5,100%"))
    took = time.perf_counter() - t0
    assert len(res.summary.names("ok")) == len(insts), res.rows
    return took, len(insts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--os-files", type=int, default=400)
    ap.add_argument("--apps-files", type=int, default=300)
    args = ap.parse_args()
    sizes = (args.os_files, args.apps_files)
    with tempfile.TemporaryDirectory(prefix="imaging-bench-deploy-") as tmp:
        a = project(Path(tmp), "parallel", sizes)
        b = project(Path(tmp), "serial", sizes)
        t_par, n = timed(a, args.parallel)
        t_ser, _ = timed(b, 1)
    print(f"{n} instruments, waves canary|1|5|rest, images {args.os_files}+{args.apps_files} files")
    print(f"--parallel={args.parallel}: {t_par:7.2f} s")
    print(f"--parallel=1: {t_ser:7.2f} s")
    print(f"ratio (one at a time / parallel): {t_ser / t_par:.2f}x on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
