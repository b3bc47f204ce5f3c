"""Benchmark: `invoke calibrate` from one lab deploy predicts a second run of the same deploy.

Two identical lab projects are provisioned on the old release with the new one staged (not timed). The
first deploys the new release to the whole shipped fleet with a per-step latency (a sleep in the lab's
fault hook: a real step waits on a remote call) and its report is calibrated into a time model. The second
project's deploy of the same release is then predicted with that model (the deploy's own simulation, same
waves and limits) and run for real; the predicted and measured lengths and their ratio are printed.

    .venv/bin/python benchmarks/bench_calibrate.py [--latency 0.05] [--parallel 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_deploy import NEW, project

from imaging.engine import runner
from imaging.ops import calibrate as calibrating
from imaging.ops import deploy as deploys
from imaging.ops import facts


def run(ctx, parallel: int, model=None):  # noqa: ANN001, ANN201
    insts = facts.select(ctx, everything=True)
    plan = deploys.plan_deploy(ctx, insts, NEW, runner.Options(parallel=parallel), model)
    t0 = time.perf_counter()
    res = deploys.run_deploy(ctx, plan)
    took = time.perf_counter() - t0
    assert not res.summary.names("failed"), res.rows
    return plan, res, took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--parallel", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-calibrate-") as tmp:
        first = project(Path(tmp), "first", (120, 80), args.latency)
        second = project(Path(tmp), "second", (120, 80), args.latency)
        _, res, took1 = run(first, args.parallel)
        cal = calibrating.calibrate(first, str(res.report_json))
        print(f"first run: {took1:.2f} s measured; calibrated over {cal.instruments} instruments: "
              + ", ".join(f"{k} {v:.3f}s" for k, v in cal.measured.items()))
        plan, _, took2 = run(second, args.parallel, cal.model)
        predicted = plan.prediction.makespan
        print(f"second run: predicted {predicted:.2f} s, measured {took2:.2f} s, "
              f"predicted/measured {predicted / took2:.3f} ({(predicted - took2) / took2 * 100:+.1f}%)")


if __name__ == "__main__":
    main()
