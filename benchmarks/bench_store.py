"""How close is ``ArtifactStore.add`` (copy + sha256 in one pass, fsync) to a plain copy of the same file?

Usage: python benchmarks/bench_store.py [--size 2GiB] [--rounds 3] [--dir PATH]

Both operations copy the same source file on the same disk. Each round runs both, alternating which goes
first, because the machine is shared and noisy. The plain copy is measured twice: ``shutil.copyfile`` alone
(the kernel copy, not durable when it returns) and ``shutil.copyfile`` followed by fsync (durable, like
``add``), which is the fair floor. Prints figures only; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from imaging.state import copying
from imaging.state.store import ArtifactStore

_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3}


def parse_size(text: str) -> int:
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    unit = t[len(num):]
    if unit not in _UNITS or not num:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 2GiB, 512MiB, 1048576)")
    return int(float(num) * _UNITS[unit])


def make_source(path: Path, size: int) -> None:
    """Incompressible content (random blocks), written once and synced so rounds start alike."""
    block = os.urandom(8 * 1024 * 1024)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())


def plain_copy(src: Path, dst: Path, *, sync: bool) -> float:
    t = time.perf_counter()
    shutil.copyfile(src, dst)
    if sync:
        fd = os.open(dst, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return time.perf_counter() - t


def store_add(src: Path, root: Path, name: str) -> float:
    store = ArtifactStore(root)
    t = time.perf_counter()
    store.add(src, name=name, kind="os-template", source="benchmark")
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=parse_size("2GiB"), help="file size (default 2GiB)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to work (default: a temp dir)")
    ap.add_argument("--chunk", type=parse_size, default=None, help="override the store's chunk size")
    ap.add_argument("--buffers", type=int, default=None,
                    help="ring size when hashing in a thread (BUFFERS; staging and verifying, not add)")
    ap.add_argument("--no-hash-thread", action="store_true",
                    help="hash inline (HASH_IN_THREAD off; staging and verifying, not add)")
    ap.add_argument("--writeback", type=parse_size, default=None,
                    help="start writeback every N bytes (WRITEBACK_EVERY); 0 disables it")
    args = ap.parse_args()
    if args.chunk:
        copying.CHUNK = args.chunk
    if args.buffers:
        copying.BUFFERS = args.buffers
    if args.no_hash_thread:
        copying.HASH_IN_THREAD = False
    if args.writeback is not None:
        copying.WRITEBACK_EVERY = args.writeback or 1 << 62

    print("note: the page cache cannot be dropped without root, so every run reads a warm (or partly warm)")
    print("      source; both methods see the same conditions, alternating order each round.")
    wb = "off" if copying.WRITEBACK_EVERY >= 1 << 62 else f"{copying.WRITEBACK_EVERY / 1024**2:.0f} MiB"
    print(f"size {args.size / 1024**2:.0f} MiB, chunk {copying.CHUNK / 1024:.0f} KiB, "
          f"hash thread {f'on, {copying.BUFFERS} buffers' if copying.HASH_IN_THREAD else 'off'}, "
          f"early writeback every {wb}, "
          f"{args.rounds} rounds, {os.cpu_count()} CPUs")

    work = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir))
    try:
        src = work / "source.vhdx"
        make_source(src, args.size)
        times: dict[str, list[float]] = {"copyfile": [], "copyfile+fsync": [], "store.add": []}
        # CPU seconds of this process (all threads, user + kernel): shows the work each method does,
        # which other load on the machine does not inflate the way it inflates wall time.
        cpu: dict[str, list[float]] = {k: [] for k in times}
        for r in range(args.rounds):
            order = ["store.add", "copyfile+fsync", "copyfile"]
            if r % 2:
                order.reverse()
            for what in order:
                c0 = time.process_time()
                if what == "store.add":
                    # a fresh store each round: otherwise the blob exists and dedupe skips the rename
                    root = work / f"store-{r}"
                    dt = store_add(src, root, f"bench-{r}")
                    shutil.rmtree(root, onerror=_force_remove)
                else:
                    dst = work / f"copy-{r}"
                    dt = plain_copy(src, dst, sync=what.endswith("fsync"))
                    dst.unlink()
                times[what].append(dt)
                cpu[what].append(time.process_time() - c0)
            row = "  ".join(f"{k} {times[k][-1]:6.2f}s" for k in times)
            print(f"round {r + 1}: {row}")

        mib = args.size / 1024**2
        print()
        print(f"{'method':16} {'median s':>9} {'best s':>8} {'MiB/s (median)':>15} {'CPU s (median)':>15}")
        for k, v in times.items():
            med = statistics.median(v)
            print(f"{k:16} {med:9.2f} {min(v):8.2f} {mib / med:15.0f} {statistics.median(cpu[k]):15.2f}")
        print(f"load average now: {os.getloadavg()[0]:.1f} (figures mean little above the CPU count)")
        add = statistics.median(times["store.add"])
        for base in ("copyfile+fsync", "copyfile"):
            ratio = add / statistics.median(times[base])
            verdict = "within" if ratio <= 1.3 else "outside"
            print(f"ratio store.add / {base}: {ratio:.2f}x ({verdict} the 1.3x target)")
    finally:
        shutil.rmtree(work, onerror=_force_remove)


def _force_remove(func, path, _exc):  # type: ignore[no-untyped-def]
    os.chmod(path, 0o600)
    func(path)


if __name__ == "__main__":
    main()
