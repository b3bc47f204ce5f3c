"""The whole release path on the lab, beside its floor: build an Apps image from a tree (default 1 GiB in
20,000 files), publish it, stage it to the 6 lab hosts, reimage one instrument.

The path is what a facility runs: ``new-release --apps-source`` (check, build, store, commit), ``publish``
(store -> share, hashed), ``stage`` on one instrument of each host (share -> host, hashed, the volume read
once per host), ``reimage`` of ZOOM (the children are clones of what was staged).

The floor is the least any tool could do for the same result: the image tools run by hand on the tree
(wimlib capture, mkntfs, wimlib apply, GPT, qemu-img convert), one plain copy of each image to the share
and to each host, one read of each image's volume, and hard-link clones for each host and the instrument
(the lab reads an image once per sha256 and clones it; a real host would mount it). Both run side by side
in one process on the same tree; the ratio is the figure.

    .venv/bin/python benchmarks/bench_pipeline.py                        # 1 GiB, 20,000 files
    .venv/bin/python benchmarks/bench_pipeline.py --files 5000 --size 256M
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _lab import lab_project
from bench_build_apps import MIB, floor, make_tree, parse_size

from imaging.core.config import Paths
from imaging.images import vhdx
from imaging.ops import new_release as new_releases
from imaging.ops import publish as publishing
from imaging.ops import reimage as reimaging
from imaging.ops import stage as staging
from imaging.ops.context import Context
from imaging.providers.lab.fs import clone_tree

RELEASE, FROM = "2026C3.3", "2026C3.1"


def run_path(base: Path, tree: Path) -> tuple[float, dict[str, float]]:
    proj = lab_project(base, "project")
    os.environ.update({"GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@imaging.invalid",
                       "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@imaging.invalid"})
    ctx = Context.load(Paths.from_env(proj))
    try:
        zoom = ctx.inventory.instrument("ZOOM")
        one_per_host = {i.host: i for i in ctx.inventory.instruments.values()}
        assert reimaging.reimage(ctx, "ZOOM", FROM).ok  # untimed: the VM, Var and Data exist, as in a facility
        phases: dict[str, float] = {}
        t0 = t = time.perf_counter()
        new_releases.new_release(ctx, RELEASE, parent=FROM, apps_source=tree)
        phases["new-release (build, store)"] = time.perf_counter() - t
        t = time.perf_counter()
        publishing.publish_for(ctx, RELEASE, one_per_host)
        phases["publish (store -> share)"] = time.perf_counter() - t
        t = time.perf_counter()
        staging.stage_for(ctx, RELEASE, list(one_per_host.values()))
        phases[f"stage ({len(one_per_host)} hosts)"] = time.perf_counter() - t
        t = time.perf_counter()
        assert reimaging.reimage(ctx, zoom.name, RELEASE).ok
        phases["reimage ZOOM"] = time.perf_counter() - t
        return time.perf_counter() - t0, phases
    finally:
        ctx.close()


def run_floor(base: Path, tree: Path, os_image: Path, hosts: int) -> tuple[float, dict[str, float]]:
    phases: dict[str, float] = {}
    t0 = t = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(dir=base))
    apps = base / "apps.vhdx"
    floor(tree, apps, scratch, vhdx.estimate_volume_size(vhdx.scan_tree(tree)) + 2 * MIB, "Apps")
    shutil.rmtree(scratch)
    phases["image tools by hand"] = time.perf_counter() - t
    t = time.perf_counter()
    share = base / "share"
    share.mkdir()
    for img in (os_image, apps):
        shutil.copyfile(img, share / img.name)
    phases["one copy to the share"] = time.perf_counter() - t
    t = time.perf_counter()
    for h in range(hosts):
        host = base / f"host{h}"
        host.mkdir()
        for img in (os_image, apps):
            shutil.copyfile(share / img.name, host / img.name)
    phases[f"one copy per host ({hosts})"] = time.perf_counter() - t
    t = time.perf_counter()
    contents = []
    for img in (os_image, apps):
        dest = base / f"{img.stem}-content"
        vhdx.read_image_files(base / "host0" / img.name, dest, workdir=base)
        contents.append(dest)
    phases["one read of each image's volume"] = time.perf_counter() - t
    t = time.perf_counter()
    for h in range(hosts):
        for src in contents:
            clone_tree(src, base / f"host{h}" / f"{src.name}-staged")
    for src in contents:
        clone_tree(src, base / f"child-{src.name}")
    phases["clones: each host's copy, the instrument's children"] = time.perf_counter() - t
    return time.perf_counter() - t0, phases


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=20_000, help="number of files (default 20000)")
    ap.add_argument("--size", type=parse_size, default=1024 * MIB, help="total bytes, e.g. 1G, 256M")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--workdir", type=Path, help="scratch folder (default: a temp folder, removed)")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-pipeline-", dir=args.workdir))
    try:
        tree = base / "tree"
        make_tree(tree, args.files, args.size, args.seed)
        (tree / "version.txt").write_text(RELEASE + "\n")
        print(f"tree: {args.files} files, {args.size / MIB:.0f} MiB")
        # The floor needs an OS template image of the same size as the path's: build the sample one first.
        warm = base / "warm"
        warm.mkdir()
        ctx = Context.load(Paths.from_env(lab_project(warm)))
        try:
            os_art, _ = staging.artifacts_of(ctx, FROM, "HVHOST01")
            os_image = ctx.store.path_of(os_art.name)
            hosts = len(ctx.inventory.hosts)
            # side by side: the floor, then the path, then the floor again (the best floor counts), so that
            # neither gets all the warm page cache
            (base / "floor1").mkdir()
            floor_total, floor_phases = run_floor(base / "floor1", tree, os_image, hosts)
            (base / "path").mkdir()
            path_total, path_phases = run_path(base / "path", tree)
            (base / "floor2").mkdir()
            again = run_floor(base / "floor2", tree, os_image, hosts)
            if again[0] < floor_total:
                floor_total, floor_phases = again
        finally:
            ctx.close()
        for title, total, phases in (("the path", path_total, path_phases), ("the floor", floor_total, floor_phases)):
            print(f"{title}: {total:8.2f} s")
            for name, secs in phases.items():
                print(f"  {name:44s} {secs:8.2f} s")
        print(f"ratio {path_total / floor_total:.2f}x (target under 1.5x)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
