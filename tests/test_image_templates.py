"""The Windows build-host scripts for disks follow the PowerShell template conventions and parse.

The real ``_prelude.ps1.j2`` belongs to the PowerShell templates helper; until it is in the tree a stand-in
with the same contract (strict errors, ``Write-ImagingResult``) is used, and the real one wins once present.
"""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import pytest
import tree_sitter as ts
import tree_sitter_powershell as tsp

from imaging.errors import InputError
from imaging.quoting import ps_literal

TEMPLATES = Path(__file__).resolve().parents[1] / "templates" / "powershell"
STAND_IN_PRELUDE = """$ErrorActionPreference = 'Stop'
function Write-ImagingResult([hashtable]$Result) {
    Write-Output '<<<IMAGING-RESULT'
    Write-Output ($Result | ConvertTo-Json -Depth 8 -Compress)
    Write-Output 'IMAGING-RESULT>>>'
}
"""

HOSTILE = "C:\\Imaging\\it's $(Remove-Item C:\\) `n\u2019"

CASES = {
    "build_apps_disk.ps1.j2": {"vhd_path": "D:\\Imaging\\images\\apps-2026C3.0.vhdx",
                               "source_path": "\\\\fileserver\\releases\\2026C3.0\\apps",
                               "label": "Apps", "size_bytes": 20 * 1024 ** 3,
                               "work_root": "D:\\Imaging\\tmp", "expect_sha256": None},
}


def _env() -> jinja2.Environment:
    loader = jinja2.ChoiceLoader([jinja2.FileSystemLoader(TEMPLATES),
                                  jinja2.DictLoader({"_prelude.ps1.j2": STAND_IN_PRELUDE})])
    env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, autoescape=False,
                             keep_trailing_newline=True)
    env.filters["ps"] = ps_literal
    from imaging.powershell import RESULT_BEGIN, RESULT_END

    env.globals.update(result_begin=RESULT_BEGIN, result_end=RESULT_END)
    return env


def _has_error(source: str) -> bool:
    parser = ts.Parser(ts.Language(tsp.language()))
    return parser.parse(source.encode("utf-8")).root_node.has_error


@pytest.mark.parametrize("name", sorted(CASES))
def test_template_follows_the_conventions(name: str) -> None:
    text = (TEMPLATES / name).read_text(encoding="utf-8")
    assert text.splitlines()[0] == "{% include '_prelude.ps1.j2' %}"
    expressions = re.findall(r"\{\{(.*?)\}\}", text)
    assert expressions, "inputs come in as Jinja variables"
    for expr in expressions:
        assert re.fullmatch(r"\s*\w+\s*\|\s*ps\s*", expr), f"input not piped through ps: {{{{{expr}}}}}"
    used = {e.split("|")[0].strip() for e in expressions}
    assert used == set(CASES[name])
    assert text.count("Write-ImagingResult") == 1
    assert re.search(r"^Write-ImagingResult @\{ changed = \$changed;", text, re.M)
    assert text.rstrip().splitlines()[-1].startswith("Write-ImagingResult")


@pytest.mark.parametrize("name", sorted(CASES))
def test_template_renders_to_valid_powershell(name: str) -> None:
    script = _env().get_template(name).render(**CASES[name])
    assert "$ErrorActionPreference = 'Stop'" in script
    assert not _has_error(script)


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_values_stay_literal(name: str) -> None:
    values = {k: (HOSTILE if isinstance(v, str) else v) for k, v in CASES[name].items()}
    script = _env().get_template(name).render(**values)
    assert ps_literal(HOSTILE) in script
    assert not _has_error(script)
    # the only place the hostile text appears is inside the verbatim literal
    assert script.count("Remove-Item C:") == script.count(ps_literal(HOSTILE))


def test_missing_input_is_an_error() -> None:
    values = dict(CASES["build_apps_disk.ps1.j2"])
    del values["label"]
    with pytest.raises((jinja2.UndefinedError, InputError)):
        _env().get_template("build_apps_disk.ps1.j2").render(**values)
