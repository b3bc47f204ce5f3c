"""How much the Apps image build costs on top of the tools it drives.

Generates a deterministic tree (default 1 GiB in 20,000 files of mixed sizes), then times
  1. ``imaging.images.vhdx.build_volume_image`` (input checks, sha256 manifest of the tree and of the image), and
  2. the floor: the same tools run by hand on the same tree with no bookkeeping (wimlib capture, mkntfs,
     wimlib apply, the module's own GPT assembly, qemu-img convert with the same options),
side by side, and prints both times and their ratio (target: within 1.2x).

    /work/venv/bin/python benchmarks/bench_build_apps.py                      # 1 GiB, 20,000 files
    /work/venv/bin/python benchmarks/bench_build_apps.py --files 2000 --size 100M
    /work/venv/bin/python benchmarks/bench_build_apps.py --through-store   # time `invoke build-apps`'s path

``--through-store`` times ``imaging.images.build.build_apps`` instead: the same build plus the tool's bookkeeping
(version check, build record, the image moved into the artifact store and hashed there).
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from imaging.images import build, vhdx
from imaging.images import tools as imagetools
from imaging.model.releases import load_releases
from imaging.state.builds import BuildRecords
from imaging.state.store import ArtifactStore

MIB = 1024 * 1024
UNITS = {"": 1, "K": 1024, "M": MIB, "G": 1024 * MIB}


def parse_size(text: str) -> int:
    text = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = text[-1] if text and text[-1] in UNITS else ""
    return int(float(text[: len(text) - len(unit)]) * UNITS[unit])


def file_sizes(count: int, total: int, rng: random.Random) -> list[int]:
    """Mixed sizes like a software release: many small files, a few large ones, summing to ``total``."""
    weights = [rng.lognormvariate(0, 2.0) for _ in range(count)]
    scale = total / sum(weights)
    sizes = [int(w * scale) for w in weights]
    sizes[0] += total - sum(sizes)
    return sizes


def make_tree(root: Path, count: int, total: int, seed: int) -> None:
    rng = random.Random(seed)
    folders = [Path(".")]
    for i in range(max(1, count // 100)):
        parent = rng.choice(folders) if len(folders) < 50 or rng.random() < 0.3 else Path(".")
        folders.append(parent / f"dir{i:04d}")
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(file_sizes(count, total, rng)):
        ext = rng.choice([".dll", ".py", ".pyc", ".txt", ".db", ".exe", ".json"])
        (root / rng.choice(folders) / f"file{i:05d}{ext}").write_bytes(rng.randbytes(size))


def floor(tree: Path, out: Path, scratch: Path, volume_size: int, label: str) -> None:
    """The tools by hand, no checks and no hashing: the least a build can cost (the caller deletes
    ``scratch`` inside the timing, as the module deletes its own)."""
    def tool(name: str, *args: object) -> None:
        subprocess.run([imagetools.tool(name), *map(str, args)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    wim, volume = scratch / "x.wim", scratch / "volume.img"
    tool("wimlib-imagex", "capture", tree, wim, label, "--compress=none", "--no-acls",
         f"--config={vhdx.capture_config(scratch)}")
    with open(volume, "wb") as fh:
        fh.truncate(volume_size)
    tool("mkntfs", "-F", "-Q", "-q", "-T", "-L", label, volume)
    tool("wimlib-imagex", "apply", wim, "1", volume)
    raw, _ = vhdx.assemble_disk(volume, label=label)
    tool("qemu-img", "convert", "-f", "raw", "-O", "vhdx", "-o", vhdx.VHDX_OPTIONS, raw, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=20_000, help="number of files (default 20000)")
    ap.add_argument("--size", type=parse_size, default=1024 * MIB, help="total bytes, e.g. 1G, 100M")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--workdir", type=Path, help="scratch folder (default: a temp folder, removed)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each, best time kept (default 1)")
    ap.add_argument("--through-store", action="store_true",
                    help="time imaging.images.build.build_apps (record + artifact store) instead of build_volume_image")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="bench-apps-", dir=args.workdir))
    try:
        tree = base / "tree"
        t0 = time.perf_counter()
        make_tree(tree, args.files, args.size, args.seed)
        releases = load_releases(Path(__file__).resolve().parents[1] / "releases")
        if args.through_store:
            (tree / "version.txt").write_text(releases["2026C3.0"].apps.version + "\n")
        print(f"tree: {args.files} files, {args.size / MIB:.0f} MiB, generated in "
              f"{time.perf_counter() - t0:.1f} s")
        volume_size = vhdx.estimate_volume_size(vhdx.scan_tree(tree))
        best_mod = best_floor = best_floor_tools = float("inf")
        manifest = None
        for i in range(args.repeat):
            # alternate which goes first, so neither always gets the warmer page cache
            order = ["module", "floor"] if i % 2 == 0 else ["floor", "module"]
            for which in order:
                out = base / f"{which}.vhdx"
                out.unlink(missing_ok=True)
                scratch = Path(tempfile.mkdtemp(dir=base))
                t = time.perf_counter()
                # both timings end in the same state: the image written and the scratch files gone
                if which == "module" and args.through_store:
                    # the store and records live outside the scratch, as the floor's image does
                    manifest = build.build_apps(store=ArtifactStore(base / f"store{i}"),
                                                records=BuildRecords(base / f"builds{i}"), releases=releases,
                                                release="2026C3.0", source=tree, workdir=scratch,
                                                size_bytes=volume_size + 2 * MIB).manifest
                    shutil.rmtree(scratch)
                    best_mod = min(best_mod, time.perf_counter() - t)
                elif which == "module":
                    manifest = vhdx.build_volume_image(tree, out, label="Apps", workdir=scratch,
                                                       size_bytes=volume_size + 2 * MIB)
                    shutil.rmtree(scratch)
                    best_mod = min(best_mod, time.perf_counter() - t)
                else:
                    floor(tree, out, scratch, volume_size, "Apps")
                    tools_only = time.perf_counter() - t
                    shutil.rmtree(scratch)
                    total = time.perf_counter() - t
                    if total < best_floor:
                        best_floor, best_floor_tools = total, tools_only
        assert manifest is not None
        print(f"image: {manifest.disk_size / MIB:.0f} MiB virtual, {manifest.image_size / MIB:.0f} MiB file, "
              f"{len(manifest.files)} files in the manifest")
        what = "imaging.images.build.build_apps" if args.through_store else "imaging.images.vhdx.build_volume_image"
        print(f"{what:34s} {best_mod:8.2f} s")
        print(f"{'floor (tools by hand + cleanup)':34s} {best_floor:8.2f} s")
        print(f"{'  of which the tools alone':34s} {best_floor_tools:8.2f} s")
        print(f"{'ratio':34s} {best_mod / best_floor:8.2f} x  (target <= 1.20)")
        print(f"{'ratio to the tools alone':34s} {best_mod / best_floor_tools:8.2f} x  (stricter: the module "
              f"also deletes its scratch)")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
