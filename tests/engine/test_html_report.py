"""Issue 18: the HTML report of a real lab deploy with a failure and the simulation's prediction, opened in
headless Chromium (Debian's chromium, driven by Playwright): one bar per phase run, a red bar and the way out
for the failed instrument, the prediction under the bars, and no network request."""

from __future__ import annotations

from pathlib import Path

from imaging.engine import runner
from imaging.engine.timeline import phase_of
from imaging.model.steps import Step
from imaging.ops import deploy as deploys
from imaging.providers.lab.faults import InjectedFault
from imaging.state.journal import FAILED
from tests.ops.test_reimage import ctx_for


def _expected_bars(journal, run_id: str) -> dict[str, list[tuple[str, str]]]:  # noqa: ANN001
    """Per instrument, the phases its steps ran, consecutive steps of one phase and result counted once."""
    out: dict[str, list[tuple[str, str]]] = {}
    for op in journal.operations(batch=run_id):
        runs = out.setdefault(op.instrument, [])
        for s in sorted(journal.steps(op.id), key=lambda s: s.started):
            key = (phase_of(s.action, s.phase), "undo" if s.phase == "undo" else
                   "failed" if s.status == FAILED else "ok")
            if not runs or runs[-1] != key:
                runs.append(key)
    return out


def test_the_report_of_a_deploy_with_a_failure_shows_every_phase_and_the_way_out(project: Path, tmp_path: Path,
                                                                                 browser) -> None:  # noqa: ANN001
    def hook(step: Step) -> None:
        if step.action == "health_check" and step.inputs.get("vm") == "NDXGEM":
            raise InjectedFault("injected failure of health_check", host=step.host, step=step.action)

    ctx = ctx_for(project, fault=hook)
    insts = [ctx.inventory.instrument(n) for n in ("ALF", "GEM", "IRIS", "CHIPIR")]
    result = deploys.deploy(ctx, insts, "2026C3.1", runner.Options(parallel=4, max_fail_percent=100))
    assert result.summary.names("failed") == ["GEM"]
    assert result.report_html is not None and result.record["prediction"]["trace"]
    expected = _expected_bars(ctx.journal, result.id)

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    url = result.report_html.resolve().as_uri()
    page.goto(url)
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert requests == [url]  # the page itself, nothing else: it works from a file share with no network

    for name, runs in expected.items():
        bars = page.locator(f'rect.bar[data-instrument="{name}"]')
        assert bars.count() == len(runs), (name, runs)
        assert [bars.nth(i).get_attribute("data-phase") for i in range(bars.count())] == [p for p, _ in runs]
    assert page.locator('rect.bar.result-failed[data-instrument="GEM"]').count() >= 1
    assert page.locator('rect.bar.result-failed:not([data-instrument="GEM"])').count() == 0
    assert page.locator('rect.bar.result-undo[data-instrument="GEM"]').count() >= 1
    ways = page.locator("code.way-out").all_inner_texts()
    assert "invoke deploy --release=2026C3.1 --instruments=GEM" in ways
    assert page.locator("rect.predicted").count() >= len(insts)  # the prediction under the bars
    assert page.locator("line.wave").count() == len(result.record["waves"])
