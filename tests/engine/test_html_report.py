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


def test_the_live_board_is_rewritten_whole_while_the_deploy_runs(project: Path, monkeypatch) -> None:  # noqa: ANN001
    """Issue 18, item 3: while a deploy runs, its page is rewritten every few seconds (here 0.1 s), by an
    atomic rename: a reader never sees half a page; it says the run is still going until the run ends."""
    import threading
    import time

    from imaging.engine import board

    monkeypatch.setattr(board, "BOARD_INTERVAL_S", 0.1)

    def slow(step: Step) -> None:
        time.sleep(0.05)

    ctx = ctx_for(project, fault=slow)
    insts = [ctx.inventory.instrument(n) for n in ("ALF", "GEM")]
    done: dict[str, runner.FleetResult] = {}
    worker = threading.Thread(target=lambda: done.setdefault("r", deploys.deploy(
        ctx, insts, "2026C3.1", runner.Options(canary=""))))
    worker.start()
    seen: list[str] = []
    while worker.is_alive():
        for page in ctx.paths.reports.glob("deploy-*.html"):
            text = page.read_text(encoding="utf-8")
            assert text.rstrip().endswith("</html>"), "a reader saw half a page"
            seen.append(text)
        time.sleep(0.02)
    worker.join()
    live = [t for t in seen if "This run is still going" in t]
    assert live and len({t.count('class="bar ') for t in live}) > 1  # it grew while the deploy ran
    final = done["r"].report_html.read_text(encoding="utf-8")
    assert "still going" not in final and 'http-equiv="refresh"' not in final
    assert not list(ctx.paths.reports.glob(".*.partial"))


def test_a_simulated_deploy_is_drawn_as_the_run_it_predicts(project: Path) -> None:
    from settings_support import inv

    res = inv(project, "deploy", "--release=2026C3.1", "--all", "--simulate")
    assert res.returncode == 0, res.stdout + res.stderr
    (page,) = (project / ".state" / "reports").glob("simulate-deploy-*.html")
    text = page.read_text(encoding="utf-8")
    assert str(page) in res.stdout.replace("\n", "")
    assert text.count('<text x="14"') == 34  # one row per instrument
    assert text.count('class="bar result-predicted phase-check') == 34  # each predicted through its check
    assert "simulation: nothing ran" in text and "canary" in text


def test_the_report_names_the_hotfixes_a_deploy_carried(project: Path, tmp_path: Path) -> None:
    from imaging.ops import hotfix as hotfixing
    from imaging.ops import reimage as reimaging
    from tests.ops.test_hotfix import make_pkg

    ctx = ctx_for(project)
    assert reimaging.reimage(ctx, "ZOOM").ok
    assert hotfixing.hotfix(ctx, ["ZOOM"], make_pkg(tmp_path, applies=("2026C3.0", "2026C3.1"))).outcomes["ZOOM"].ok
    result = deploys.deploy(ctx, [ctx.inventory.instrument("ZOOM")], "2026C3.1", runner.Options())
    assert not result.failed
    page = result.report_html.read_text(encoding="utf-8")
    assert "Hotfixes carried or dropped" in page
    assert "<tr><td>ZOOM</td><td>HF-001</td><td>-</td></tr>" in page
