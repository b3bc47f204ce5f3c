"""quoting.check_ntfs_name: what Windows can create on NTFS is accepted, everything else refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imaging.core.errors import InputError
from imaging.core.quoting import check_ntfs_name

FORBIDDEN = '<>:"/\\|?*' + "".join(chr(c) for c in range(32))


@pytest.mark.parametrize("name", ["server.dll", "Größe.txt", "日本語", "a b.c", "$Secure-not-root",
                                  "CONFIG.SYS", "con1", "LPT", ".hidden", "x" * 255])
def test_accepted(name: str) -> None:
    assert check_ntfs_name(name, field="f") == name


@pytest.mark.parametrize("name", ["", ".", "..", "CON", "con.txt", "Aux.tar.gz", "NUL ", "COM9", "lpt1.log",
                                  "COM\u00b9", "end.", "end ", "x" * 256, "\U0001F600" * 128, "bad\udcff"])
def test_refused(name: str) -> None:
    with pytest.raises(InputError):
        check_ntfs_name(name, field="f", file="tree/x")


@given(st.text(min_size=1, max_size=40), st.sampled_from(FORBIDDEN), st.text(max_size=40))
def test_any_forbidden_character_is_refused(head: str, bad: str, tail: str) -> None:
    with pytest.raises(InputError) as err:
        check_ntfs_name(head + bad + tail, field="file name")
    assert "file name" in str(err.value)


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters=FORBIDDEN),
               min_size=1, max_size=60))
def test_accepts_or_refuses_with_a_fix(name: str) -> None:
    try:
        assert check_ntfs_name(name, field="f") == name
    except InputError as exc:
        assert "Fix:" in str(exc)
        assert name[-1] in ". " or name.split(".")[0].rstrip(" ").upper() in {
            "CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"} or name[:3].upper() in ("COM", "LPT")


@pytest.mark.parametrize("path", [
    "server/bin/CON", "NUL.dll", "COM1/x.dll", "module.bin:evil", "x.dll.", "*.dll", "a?b|c.dll",
    "server/bin/\u0441erver.dll",  # a Cyrillic look-alike of 'server.dll'
    "server\uff0fbin.dll",         # a fullwidth '/'
    "a" * 260,
])
def test_relative_paths_that_reach_windows_are_refused_when_windows_cannot_hold_them(path: str) -> None:
    from imaging.core.errors import InputError
    from imaging.core.quoting import check_relpath

    with pytest.raises(InputError):
        check_relpath(path, field="files")


def test_ordinary_relative_paths_pass_unchanged() -> None:
    from imaging.core.quoting import check_relpath

    assert check_relpath("server\\bin\\run-control.dll", field="files") == "server/bin/run-control.dll"
    assert check_relpath("python/init_{instrument}.py.j2", field="files") == "python/init_{instrument}.py.j2"
