"""quoting.windows_command_line: what a Windows program receives is exactly the argv we meant."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imaging.core.errors import InputError
from imaging.core.quoting import windows_command_line


def command_line_to_argv(line: str) -> list[str]:
    """A reference reading of CommandLineToArgvW (the program name, then the backslash/quote rules)."""
    i, n = 0, len(line)
    if line.startswith('"'):
        end = line.index('"', 1)
        args, i = [line[1:end]], end + 1
    else:
        while i < n and line[i] not in " \t":
            i += 1
        args = [line[:i]]
    while True:
        while i < n and line[i] in " \t":
            i += 1
        if i >= n:
            return args
        current, quoted = [], False
        while i < n and (quoted or line[i] not in " \t"):
            if line[i] == "\\":
                j = i
                while j < n and line[j] == "\\":
                    j += 1
                count = j - i
                if j < n and line[j] == '"':
                    current.append("\\" * (count // 2))
                    if count % 2:
                        current.append('"')
                        i = j + 1
                    else:
                        i = j
                else:
                    current.append("\\" * count)
                    i = j
            elif line[i] == '"':
                quoted = not quoted
                i += 1
            else:
                current.append(line[i])
                i += 1
        args.append("".join(current))


# what an argument may contain once cmd.exe metacharacters are excluded
safe_text = st.text(
    alphabet=st.characters(blacklist_characters='%!^&|<>"\r\n\x00', blacklist_categories=("Cs",)), max_size=30
)
program = st.from_regex(r"\A[A-Za-z]:\\[A-Za-z0-9 ()._-]{1,20}\\[A-Za-z0-9_-]{1,10}\.exe\Z")


@given(program, st.lists(safe_text, max_size=6))
def test_round_trip(prog, args):
    argv = [prog, *args]
    assert command_line_to_argv(windows_command_line(argv)) == argv


@given(program, st.lists(safe_text, max_size=6))
def test_cmd_exe_sees_no_operator_outside_quotes(prog, args):
    line = windows_command_line([prog, *args])
    outside, quoted = [], False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        elif not quoted:
            outside.append(ch)
    assert not quoted
    assert not set(outside) & set("()&|<>^%!")


def test_examples():
    assert windows_command_line(["whoami.exe", "/all"]) == "whoami.exe /all"
    assert (
        windows_command_line([r"C:\Program Files\x.exe", "a b\\", ""])
        == '"C:\\Program Files\\x.exe" "a b\\\\" ""'
    )


@pytest.mark.parametrize(
    "argv",
    [
        [],
        "whoami.exe",
        ["x.exe", 3],
        ["x.exe", "100%"],
        ["x.exe", "a&b"],
        ["x.exe", 'a"b'],
        ["x.exe", "!v!"],
        [""],
        ["C:\\Tools\\"],
    ],
)
def test_refusals(argv):
    with pytest.raises(InputError):
        windows_command_line(argv)
