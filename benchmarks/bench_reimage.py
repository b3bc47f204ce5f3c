"""Benchmark: reimage one lab instrument (20,000-file OS template, 10,000-file Apps) against the floor.

The floor is cloning the same two trees the same way (hard links) with nothing else: no plan, journal,
backup, rescue, guest configuration or health check. Both are measured side by side, alternating, and
the ratio of medians is printed. Images are staged once beforehand, as they are before a shutdown.

    .venv/bin/python benchmarks/bench_reimage.py [--os-files 20000] [--apps-files 10000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _lab import lab_project

from imaging.core.config import Paths
from imaging.ops import facts
from imaging.ops import reimage as reimaging
from imaging.ops import stage as staging
from imaging.ops.context import Context
from imaging.providers.lab.fs import clone_tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--os-files", type=int, default=20000)
    ap.add_argument("--apps-files", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="imaging-bench-") as tmp:
        proj = lab_project(Path(tmp))
        ctx = Context.load(Paths.from_env(proj))
        ctx.sample_sizes = (args.os_files, args.apps_files)
        inst = ctx.inventory.instrument("ZOOM")
        release = facts.desired_release(ctx, inst)
        t0 = time.perf_counter()
        staging.stage(ctx, release, inst.host)
        print(f"staging {args.os_files} + {args.apps_files} files once: {time.perf_counter() - t0:.2f} s")
        assert reimaging.reimage(ctx, "ZOOM").ok  # first provisioning: creates the VM, Var and Data
        os_img, apps_img = staging.artifacts_of(ctx, release, inst.host)
        host = ctx.inventory.host_of(inst)
        from imaging.model import layout

        tpl = ctx.providers.lab.path(inst.host, layout.image_path(host, os_img.name, os_img.sha256)) / "content"
        apps = ctx.providers.lab.path(inst.host, layout.image_path(host, apps_img.name, apps_img.sha256)) / "content"

        reimage_times, floor_times = [], []
        for r in range(args.rounds):
            for which in (("reimage", "floor") if r % 2 == 0 else ("floor", "reimage")):
                if which == "reimage":
                    t0 = time.perf_counter()
                    out = reimaging.reimage(ctx, "ZOOM")
                    reimage_times.append(time.perf_counter() - t0)
                    assert out.ok, out.error
                else:
                    dst = Path(tmp) / f"floor-{r}"
                    t0 = time.perf_counter()
                    clone_tree(tpl, dst / "os")
                    clone_tree(apps, dst / "apps")
                    floor_times.append(time.perf_counter() - t0)
                    shutil.rmtree(dst)
        ctx.close()
    rm, fm = statistics.median(reimage_times), statistics.median(floor_times)
    print(f"reimage (median of {args.rounds}): {rm:.3f} s   runs: {', '.join(f'{t:.3f}' for t in reimage_times)}")
    print(f"floor   (median of {args.rounds}): {fm:.3f} s   runs: {', '.join(f'{t:.3f}' for t in floor_times)}")
    print(f"ratio reimage/floor: {rm / fm:.2f}x (target: under 2x)")


if __name__ == "__main__":
    main()
