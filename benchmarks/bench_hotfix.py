"""Benchmark: hotfix the whole lab fleet against reimaging the whole lab fleet, side by side.

Every instrument of the shipped inventory is provisioned on the lab provider first (images staged once per
host, as before a shutdown). Then, each round: the whole fleet is hotfixed (a 2-file package, the VMs keep
running), the hotfix is reverted (timed too), and the whole fleet is reimaged to the release it runs. Both
fleet runs use the same wave engine (`runner.run_fleet`, no canary, one wave: --parallel at once, each host's
max_concurrent per host; the reimage is `deploys.deploy --force` to the release each runs). Medians and the
ratio reimage / hotfix are printed.

    .venv/bin/python benchmarks/bench_hotfix.py [--os-files 2000] [--apps-files 1000] [--rounds 3] [--parallel 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _lab import lab_project

from imaging.core.config import Paths
from imaging.engine import runner
from imaging.model.hotfixes import build_manifest, write_package
from imaging.ops import deploy as deploys
from imaging.ops import facts
from imaging.ops import hotfix as hotfixing
from imaging.ops import stage as staging
from imaging.ops.context import Context


def fleet_ok(result: runner.FleetResult, what: str) -> None:
    bad = {n: r for n, r in result.rows.items() if r["status"] not in ("ok", "skipped")}
    if bad:
        raise SystemExit(f"{what} failed on {len(bad)} instruments: {bad}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--os-files", type=int, default=2000)
    ap.add_argument("--apps-files", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--parallel", type=int, default=8)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="imaging-bench-") as tmp:
        proj = lab_project(Path(tmp))
        ctx = Context.load(Paths.from_env(proj))
        ctx.sample_sizes = (args.os_files, args.apps_files)
        names = sorted(ctx.inventory.instruments)
        t0 = time.perf_counter()
        for inst in ctx.inventory.instruments.values():  # stage each release once per host, sequentially
            staging.stage(ctx, facts.desired_release(ctx, inst), inst.host)
        print(f"{len(names)} instruments on {len(ctx.inventory.hosts)} hosts; staging "
              f"{args.os_files} + {args.apps_files} files per release: {time.perf_counter() - t0:.2f} s")
        everyone = list(ctx.inventory.instruments.values())
        opts = runner.Options(parallel=args.parallel, canary="")
        fleet_ok(deploys.deploy(ctx, everyone, "current", opts), "first provisioning")
        releases = sorted({facts.running_release(ctx, i) or "" for i in ctx.inventory.instruments.values()})
        files = {"server/bin/module00000.bin": b"patched server module\n" * 200,
                 "client/bin/hotfix-added.dll": b"MZ" + b"\x00" * 4096}
        pkg = write_package(Path(tmp) / "HF-BENCH", build_manifest(
            "HF-BENCH", "benchmark hotfix", releases, files, restart=["InstrumentServer"]), files)

        hot, rev, reim = [], [], []
        for r in range(args.rounds):
            t = time.perf_counter()
            fleet_ok(hotfixing.hotfix(ctx, names, pkg, opts), "hotfix")
            hot.append(time.perf_counter() - t)
            t = time.perf_counter()
            fleet_ok(hotfixing.revert(ctx, names, "HF-BENCH", opts), "revert")
            rev.append(time.perf_counter() - t)
            t = time.perf_counter()
            fleet_ok(deploys.deploy(ctx, everyone, "current", runner.Options(parallel=args.parallel, canary="",
                                                                          force=True)), "reimage")
            reim.append(time.perf_counter() - t)
            print(f"round {r + 1}: hotfix fleet {hot[-1]:.2f} s | revert fleet {rev[-1]:.2f} s | "
                  f"reimage fleet {reim[-1]:.2f} s")
        h, v, m = statistics.median(hot), statistics.median(rev), statistics.median(reim)
        print(f"median over {args.rounds} rounds, {len(names)} instruments, parallel {args.parallel}:")
        print(f"  hotfix whole fleet : {h:8.2f} s  ({h / len(names) * 1000:.0f} ms per instrument)")
        print(f"  revert whole fleet : {v:8.2f} s")
        print(f"  reimage whole fleet: {m:8.2f} s  ({m / len(names) * 1000:.0f} ms per instrument)")
        print(f"  ratio reimage / hotfix: {m / h:.1f}x")
        ctx.close()


if __name__ == "__main__":
    main()
