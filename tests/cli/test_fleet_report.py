"""Issue 18, item 2: `invoke report --fleet` draws the fleet as it is now: what each instrument runs, its
labels, drift found on its Settings volume, and a strip of its last operations; opened in headless Chromium."""

from __future__ import annotations

from pathlib import Path

from settings_support import inv

from tests.ops.test_reimage import ctx_for


def test_the_fleet_page_shows_each_instrument_its_drift_and_its_history(project: Path, tmp_path: Path,
                                                                          browser) -> None:  # noqa: ANN001
    assert inv(project, "reimage", "--instrument=ZOOM").returncode == 0
    assert inv(project, "reimage", "--instrument=ZOOM", "--release=2026C3.1").returncode == 0
    ctx = ctx_for(project)
    ctx.providers.lab.guest_write("HVHOST04", "NDXZOOM", r"C:\Instrument\Settings\globals.txt", b"tuned\n")
    out = tmp_path / "fleet.html"
    res = inv(project, "report", "--fleet", f"--out={out}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "drift on ZOOM" in res.stdout

    page = browser.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(out.resolve().as_uri())
    assert requests == [out.resolve().as_uri()]
    assert page.locator("tr.instrument").count() == 34
    zoom = page.locator('tr.instrument[data-instrument="ZOOM"]')
    cells = zoom.locator("td").all_inner_texts()
    assert cells[3] == "2026C3.1" and "changed globals.txt" in cells[10]
    assert zoom.locator("rect.history").count() == len(ctx.journal.operations(instrument="ZOOM")) == 2
    assert page.locator('tr.instrument[data-instrument="GEM"] rect.history').count() == 0
    assert inv(project, "report").returncode != 0  # which report: refused, with the fix
