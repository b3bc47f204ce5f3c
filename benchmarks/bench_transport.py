"""Benchmark: run_script calls per second against the loopback WSMan endpoint, session reuse vs none.

"Reused" is how the provider works: one SessionPool, so one shell per host for every call. "Shell per
call" opens a fresh SessionPool (a new shell: Create, Receive, then Delete) for every call, which is what
the design notes warn against. Both run the same trivial script, alternating rounds; medians are printed.
Loopback only measures our own overhead (XML, PSRP framing, HTTP), not a real host's latency.

    .venv/bin/python benchmarks/bench_transport.py [--calls 200] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from loopback_wsman import LoopbackWSMan, Reply

from imaging.core.pstemplates import RESULT_BEGIN, RESULT_END
from imaging.providers.hyperv.connection import Connection
from imaging.providers.hyperv.credentials import Credentials
from imaging.providers.hyperv.session import SessionPool

CREDS = {"BENCH": Credentials("bench-user", "bench-password")}


def reply(script: str, params: dict) -> Reply:
    return Reply(output=[RESULT_BEGIN, '{"changed": false}', RESULT_END])


def run(port: int, calls: int, threads: int, reuse: bool) -> float:
    conn = Connection(
        host="BENCH",
        address="127.0.0.1",
        port=port,
        ssl=False,
        insecure_loopback=True,
        max_concurrent=threads,
    )
    shared = SessionPool([conn], credentials=CREDS) if reuse else None

    def worker(n: int) -> None:
        for _ in range(n):
            if shared is not None:
                shared.run_script("BENCH", "'x'", step="bench", timeout_s=30)
            else:
                with SessionPool([conn], credentials=CREDS) as pool:
                    pool.run_script("BENCH", "'x'", step="bench", timeout_s=30)

    started = time.perf_counter()
    workers = [threading.Thread(target=worker, args=(calls // threads,)) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - started
    if shared is not None:
        shared.close()
    return (calls // threads) * threads / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    reused, fresh = [], []
    with LoopbackWSMan(reply) as endpoint:
        for _ in range(args.rounds):
            reused.append(run(endpoint.port, args.calls, args.threads, reuse=True))
            fresh.append(run(endpoint.port, args.calls, args.threads, reuse=False))
        shells = endpoint.shells_created
    print(f"calls per round: {args.calls}, threads: {args.threads}, rounds: {args.rounds}")
    print(f"reused session : {statistics.median(reused):8.1f} calls/s (median)")
    print(f"shell per call : {statistics.median(fresh):8.1f} calls/s (median)")
    print(f"speed-up       : {statistics.median(reused) / statistics.median(fresh):8.2f}x")
    print(
        f"shells created : {shells} in total (reused rounds account for {args.rounds * args.threads} at most)"
    )


if __name__ == "__main__":
    main()
