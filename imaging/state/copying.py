"""Copying big files with their sha256 computed on the way, durably: the artifact store's one copy path.

The kernel copies (``copy_file_range``) while a thread hashes what landed, read back from the destination,
so the hash proves the copy; writeback is started as the copy goes so the final fsync is short.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

CHUNK = 1024 * 1024
"""Bytes per read: big enough that per-call overhead vanishes, small enough to stay in the CPU cache."""

WRITEBACK_EVERY = 16 * 1024 * 1024
"""Start writeback of copied data every this many bytes (see :func:`_start_writeback`)."""

BUFFERS = 4
"""Chunks in flight when hashing in a thread: enough that the hashing thread never waits for work."""

HASH_IN_THREAD = True
"""Hash in a helper thread while this one copies (hashlib and file I/O release the GIL). On the 2-core
build machine this brought a 2 GiB add from about 2.4 s to 1.5-2.1 s (see benchmarks/bench_store.py)."""

Progress = Callable[[int, int], None]
"""``progress(done_bytes, total_bytes)``, called after every chunk (for the CLI's progress bars)."""


def _advise(fd: int, advice_name: str) -> None:
    """Tell the kernel how we read (sequentially, once); harmless where unsupported."""
    advice = getattr(os, advice_name, None)
    if advice is not None and hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, advice)


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (POSIX); Windows has no directory fsync and needs none."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pump(src: BinaryIO, dst: BinaryIO | None, digest: hashlib._Hash, *, done: int, total: int,
          progress: Progress | None, limit: int | None = None) -> int:
    """Copy ``src`` to ``dst`` (or only read, when ``dst`` is None) while feeding ``digest``: used to stage,
    resume and verify (``add`` uses the faster kernel copy of :func:`_copy_and_hash`).

    Reads into a small ring of reusable buffers (constant memory, no per-chunk allocation). With
    ``HASH_IN_THREAD`` each chunk is queued to one helper thread that hashes while this thread writes it
    and reads the next ones; a single worker takes its queue in order, so the digest sees the chunks in
    order, and a buffer is reused only after its hash is done. Every ``WRITEBACK_EVERY`` bytes the kernel
    is asked to start writing the copied range to disk, so the final fsync does not wait for the whole
    file. Returns the bytes moved; stops after ``limit`` when given.
    """
    chunk_size = CHUNK
    ring = BUFFERS if HASH_IN_THREAD else 1
    views = [memoryview(bytearray(chunk_size)) for _ in range(ring)]
    hashed: list[Future[None] | None] = [None] * ring
    moved = 0
    flushed = 0
    dst_fd = dst.fileno() if dst is not None else -1
    dst_start = os.lseek(dst_fd, 0, os.SEEK_CUR) if dst is not None else 0
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256") if HASH_IN_THREAD else None
    try:
        i = 0
        while limit is None or moved < limit:
            slot = i % ring
            pending = hashed[slot]
            if pending is not None:
                pending.result()  # this buffer's previous chunk is hashed: safe to overwrite
                hashed[slot] = None
            view = views[slot]
            if limit is not None and limit - moved < chunk_size:
                view = view[: limit - moved]
            n = src.readinto(view)
            if not n:
                break
            chunk = view[:n]
            if pool is not None:
                hashed[slot] = pool.submit(digest.update, chunk)
            else:
                digest.update(chunk)
            if dst is not None:
                written = 0
                while written < n:  # raw files may write short
                    written += dst.write(chunk[written:]) or 0
            moved += n
            i += 1
            if dst is not None and moved - flushed >= WRITEBACK_EVERY:
                _start_writeback(dst_fd, dst_start + flushed, moved - flushed)
                flushed = moved
            if progress is not None:
                progress(done + moved, total)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)
    for pending in hashed:
        if pending is not None:
            pending.result()  # surface a hashing error, if any
    return moved


COPY_SLICES_PER_CALL = 8  # the kernel copies 8 chunks per call; the hash reads back one chunk at a time


def _kernel_copy(src_fd: int, dst_fd: int, offset: int, length: int) -> int:
    """Copy one slice inside the kernel (no trip through Python's memory); falls back to read/write."""
    if hasattr(os, "copy_file_range"):
        try:
            return os.copy_file_range(src_fd, dst_fd, length, offset, offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
    data = os.pread(src_fd, length, offset)
    written = 0
    while written < len(data):
        written += os.pwrite(dst_fd, data[written:], offset + written)
    return len(data)


def _copy_and_hash(src_fd: int, dst_fd: int, check_fd: int, digest: hashlib._Hash, *, total: int,
                   progress: Progress | None) -> int:
    """Copy ``src`` to ``dst`` while hashing what was written, in one streaming pass.

    The kernel copies slice after slice; a helper thread hashes each slice as soon as it has landed,
    reading it back from the destination (``check_fd``, the same file opened for reading) while it is still
    in the page cache, so the digest is of the stored bytes, not of a source that might change. Then it lets
    the kernel write that range out and drop it from the cache. Copy and hash overlap on two cores;
    memory stays at one chunk.
    """
    copied = 0
    landed = threading.Condition()
    failed: list[BaseException] = []
    chunk = CHUNK
    copy_slice = CHUNK * COPY_SLICES_PER_CALL

    def hasher() -> None:
        hashed = flushed = 0
        buf = bytearray(chunk)
        view = memoryview(buf)
        try:
            while True:
                with landed:
                    while copied == hashed and copied < total and not failed:
                        landed.wait()
                    upto = copied
                if hashed >= total or failed:
                    return
                while hashed < upto:
                    n = os.preadv(check_fd, [view[: min(chunk, upto - hashed)]], hashed)
                    if n <= 0:
                        raise OSError(f"short read of the copy at {hashed}")
                    digest.update(view[:n])
                    hashed += n
                    if hashed - flushed >= WRITEBACK_EVERY:
                        _start_writeback(check_fd, flushed, hashed - flushed)  # hashed: let it go to disk
                        flushed = hashed
                    if progress is not None:
                        progress(hashed, total)
        except BaseException as exc:  # noqa: BLE001 - handed to the copying thread
            failed.append(exc)

    worker = threading.Thread(target=hasher, name="sha256", daemon=True)
    worker.start()
    try:
        while copied < total and not failed:
            n = _kernel_copy(src_fd, dst_fd, copied, min(copy_slice, total - copied))
            if n <= 0:
                break  # the source shrank: the size check below refuses it
            with landed:
                copied += n
                landed.notify()
    finally:
        with landed:
            total = copied if copied < total else total
            landed.notify()
        worker.join()
    if failed:
        raise failed[0]
    return copied


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask Linux to begin writing a copied range to disk now (POSIX_FADV_DONTNEED starts writeback of
    dirty pages and later drops them from the cache: a 2 GiB image should not evict everything else)."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)


def _hash_file(path: Path, *, progress: Progress | None = None) -> tuple[str, int]:
    with open(path, "rb", buffering=0) as f:
        _advise(f.fileno(), "POSIX_FADV_SEQUENTIAL")
        h = hashlib.sha256()
        size = os.fstat(f.fileno()).st_size
        n = _pump(f, None, h, done=0, total=size, progress=progress)
    return h.hexdigest(), n


def _make_writable(path: Path) -> None:
    """Let the owner write (and so replace or remove) a file the store had made read-only."""
    with contextlib.suppress(OSError):
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
