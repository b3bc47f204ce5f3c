"""Every step script, rendered for the sample instrument NDXZOOM on HVHOST01 (storage root D:\\Imaging),
must equal its reviewed golden file. After a deliberate template change, refresh and review the diff:

    python -m imaging.providers.hyperv.scripts --refresh-golden tests/golden/powershell
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from imaging.model.steps import ACTIONS
from imaging.providers.hyperv.scripts import GOLDEN_INPUTS, refresh_golden, render_script

GOLDEN = Path(__file__).parents[1] / "golden" / "powershell"
SAMPLES = json.loads((GOLDEN / GOLDEN_INPUTS).read_text(encoding="utf-8"))


def test_every_action_has_sample_inputs_and_a_golden_file():
    assert set(SAMPLES) == set(ACTIONS)
    assert {p.stem for p in GOLDEN.glob("*.ps1")} == set(ACTIONS)


@pytest.mark.parametrize("action", list(ACTIONS))
def test_rendered_script_matches_golden(action):
    expected = (GOLDEN / f"{action}.ps1").read_bytes().decode("utf-8")
    actual = render_script(action, SAMPLES[action])
    assert actual == expected, (
        f"{action}.ps1 differs from its golden file; if the change is intended, run "
        "'python -m imaging.providers.hyperv.scripts --refresh-golden tests/golden/powershell' and review the diff")


def test_refresh_writes_what_render_produces(tmp_path):
    (tmp_path / GOLDEN_INPUTS).write_text(json.dumps(SAMPLES), encoding="utf-8")
    written = refresh_golden(tmp_path)
    assert len(written) == len(ACTIONS)
    for path in written:
        assert path.read_bytes() == render_script(path.stem, SAMPLES[path.stem]).encode("utf-8")


def test_sample_values_appear_only_as_literals():
    # Settings are bytes: they arrive as base64 literals and are decoded on the host, so text holding
    # $(...), a backtick or quotes (and binary, CRLF or UTF-16 files) reaches the volume byte for byte.
    files = SAMPLES["write_settings"]["files"]
    raw = {rel: base64.b64decode(b64) for rel, b64 in files.items()}
    assert any(b"$(not expanded) `n" in data for data in raw.values())
    script = render_script("write_settings", SAMPLES["write_settings"])
    assert all(f"'{b64}'" in script for b64 in files.values()) and "FromBase64String" in script
    assert "$(not expanded)" not in script


def test_read_volume_matches_its_only_paths_in_windows_form() -> None:
    """Found in review: the 'only' filter dropped the slash ('imaging/record.json' became
    'imagingrecord.json'), so reading the record off a stopped VM's Var disk found nothing on a real host."""
    text = render_script("read_volume", {"path": "D:\\Imaging\\NDXZOOM-var.vhdx", "max_bytes": 1024,
                                         "only": ["imaging/record.json"]})
    assert ".Replace('/', '\\').ToLowerInvariant()" in text
    assert "$low.StartsWith($_ + '\\')" in text
