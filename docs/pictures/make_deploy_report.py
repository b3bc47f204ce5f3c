"""Make docs/pictures/deploy-report.png: the HTML report of a 34-instrument lab deploy, in headless Chromium.

The deploy is the shipped fleet's, on the lab with a per-step latency (a real step waits on a remote call),
LET's health check failing on purpose (a red bar and its undo), and the prediction of a time model
calibrated from an identical first run drawn under the bars. Run from the repository:

    .venv/bin/python docs/pictures/make_deploy_report.py [--latency 0.05]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from bench_deploy import NEW, project  # noqa: E402

from imaging.core.config import Paths  # noqa: E402
from imaging.engine import runner  # noqa: E402
from imaging.model.steps import Step  # noqa: E402
from imaging.ops import calibrate as calibrating  # noqa: E402
from imaging.ops import deploy as deploys  # noqa: E402
from imaging.ops import facts  # noqa: E402
from imaging.ops.context import Context  # noqa: E402
from imaging.providers.lab.faults import InjectedFault  # noqa: E402

OUT = Path(__file__).with_name("deploy-report.png")


def main() -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.05)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="report-picture-") as tmp:
        first = project(Path(tmp), "first", (120, 80), args.latency)
        res = deploys.deploy(first, facts.select(first, everything=True), NEW, runner.Options(parallel=8))
        model = calibrating.calibrate(first, str(res.report_json)).model
        second = project(Path(tmp), "second", (120, 80), 0)
        paths = second.paths

        def hook(step: Step) -> None:
            time.sleep(args.latency)
            if step.action == "health_check" and step.inputs.get("vm") == "NDXLET":
                raise InjectedFault("injected failure of health_check", host=step.host, step=step.action)

        ctx = Context.load(Paths(root=paths.root, inventory=paths.inventory, releases=paths.releases,
                                 templates=paths.templates, state=paths.state), fault=hook)
        ctx.sample_sizes = (120, 80)
        res = deploys.deploy(ctx, facts.select(ctx, everything=True), NEW,
                             runner.Options(parallel=8, max_fail_percent=100), model=model)
        chromium = shutil.which("chromium") or "chromium"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1140, "height": 900})
            page.goto(res.report_html.resolve().as_uri())
            page.screenshot(path=str(OUT), full_page=True)
            browser.close()
    print(f"{OUT} ({OUT.stat().st_size} bytes) from {res.id}: "
          f"{len(res.summary.names('ok'))} ok, {len(res.summary.names('failed'))} failed")


if __name__ == "__main__":
    main()
