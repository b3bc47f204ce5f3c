"""Rendered scripts are valid PowerShell, broken templates are caught, and ps_literal cannot be escaped.

The parser is tree-sitter-powershell. Its grammar does not know that PowerShell also treats the Unicode
quotes U+2018-U+201B as single quotes (language spec, verbatim-string-literal), so the literal tests read
each string node back with the spec's own rule (``read_verbatim``) and require it to end exactly where the
node ends: a quote that PowerShell would see as a terminator is caught even where tree-sitter does not.
The grammar parses ``$x = <literal>`` as an assignment_expression whose ``value`` field holds the right-hand
side (checked below); it lacks the numeric multiplier suffixes (``1GB``), which templates therefore avoid.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jinja2
import pytest
import tree_sitter
import tree_sitter_powershell
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imaging.core.errors import InputError
from imaging.core.pstemplates import UnquotedOutput, make_environment
from imaging.core.quoting import ps_literal
from imaging.model.steps import ACTIONS
from imaging.providers.hyperv.scripts import TEMPLATE_DIR, render_script

PARSER = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
SAMPLES = json.loads((Path(__file__).parents[1] / "golden" / "powershell" / "_inputs.json").read_text())
QUOTES = "'\u2018\u2019\u201a\u201b"


def syntax_problems(script: str) -> list[str]:
    """Every ERROR or MISSING node in the parse of ``script``, as 'line:col kind text'."""
    out: list[str] = []
    stack = [PARSER.parse(script.encode("utf-8")).root_node]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            kind = "MISSING" if node.is_missing else "ERROR"
            out.append(f"{node.start_point[0] + 1}:{node.start_point[1] + 1} {kind} {node.text[:60]!r}")
        stack.extend(node.children)
    return out


def read_verbatim(text: str) -> str:
    """The value of one PowerShell verbatim string literal, read by the language's rule: any single-quote
    character ends the string unless another single-quote character follows, which then stands for itself.
    Raises AssertionError if the literal ends before ``text`` does."""
    assert text and text[0] in QUOTES, f"not a verbatim string: {text!r}"
    out, i = [], 1
    while True:
        assert i < len(text), f"unterminated verbatim string: {text!r}"
        ch = text[i]
        if ch in QUOTES:
            if i + 1 < len(text) and text[i + 1] in QUOTES:
                out.append(text[i + 1])
                i += 2
                continue
            assert i == len(text) - 1, f"PowerShell would end the string at offset {i}: {text!r}"
            return "".join(out)
        out.append(ch)
        i += 1


# --- every script the provider can render parses cleanly -------------------------------------------

HOSTILE = "it's ‘quoted’ ‚low‛ `backtick` $(Remove-Item C:\\) ; # <# not a comment #>\n@'\nnext'@ ünï"
# A name (the virtual switch) may hold anything a Windows name can: still quotes, `$(...)`, `;` and `#`.
HOSTILE_NAME = "it's ‘quoted’ ‚low‛ `backtick` $(Remove-Item C) ; # @'next'@ ünï"


def hostile_inputs(action: str) -> dict[str, Any]:
    """The sample inputs with every free-text value replaced by something that would break naive quoting."""
    inputs = json.loads(json.dumps(SAMPLES[action]))
    for key in ("owner", "op_id", "expect_apps_version", "expect_version", "unattend", "provision"):
        if key in inputs:
            inputs[key] = HOSTILE
    if "switch" in inputs:
        inputs["switch"] = HOSTILE_NAME
    if isinstance(inputs.get("files"), dict):  # write_settings, write_volume_files: relpath -> base64 bytes
        inputs["files"] = {"a/b.txt": base64.b64encode(HOSTILE.encode()).decode(), "c.xml": ""}
    if "entry" in inputs:  # apply_hotfix: free text recorded in the ledger
        inputs["entry"] = {"description": HOSTILE, HOSTILE: HOSTILE}
    if action == "apply_hotfix":
        inputs["files"] = inputs["files"][:1]  # a one-item list must stay a list
    if "record" in inputs:
        inputs["record"] = {"note": HOSTILE, HOSTILE: [HOSTILE], "nested": {"list": [[1, 2]], "empty": {}}}
    for key in ("artifacts", "volumes", "links", "exclude"):
        if key in inputs:
            inputs[key] = inputs[key][:1]  # a one-item list must stay a list
    return inputs


@pytest.mark.parametrize("action", list(ACTIONS))
@pytest.mark.parametrize("variant", ["sample", "hostile"])
def test_rendered_script_parses_without_errors(action, variant):
    inputs = SAMPLES[action] if variant == "sample" else hostile_inputs(action)
    script = render_script(action, inputs)
    assert syntax_problems(script) == [], f"{action} ({variant}) does not parse"


def test_hostile_text_stays_inside_one_literal():
    script = render_script("acquire_lock", hostile_inputs("acquire_lock"))
    line = next(x for x in script.splitlines() if x.strip().startswith("$Owner = "))
    assert line.strip() == "$Owner = " + ps_literal(HOSTILE).splitlines()[0]


# --- broken templates are caught --------------------------------------------------------------------

def _env_with(tmp_path: Path, templates: dict[str, str]) -> jinja2.Environment:
    for name, text in templates.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    return make_environment(tmp_path)


@pytest.mark.parametrize("source", [
    "$Vm = {{ inputs.vm }}\n",
    "$Vm = '{{ inputs.vm }}'\n",
    "$Vm = {{ inputs.vm | ps }} + {{ inputs.vm ~ 'x' }}\n",
    "{% for v in inputs.list %}$v = {{ v }}\n{% endfor %}",
    "{% filter ps %}{{ inputs.vm | ps }}{% endfilter %}\n",
    "{% macro m(x) %}{{ x }}{% endmacro %}{{ m(inputs.vm) | ps }}\n",
])
def test_template_printing_a_raw_value_is_refused(tmp_path, source):
    env = _env_with(tmp_path, {"get_state.ps1.j2": source})
    with pytest.raises(UnquotedOutput, match="get_state.ps1.j2"):
        render_script("get_state", {"vm": "NDXZOOM"}, env=env)


def test_raw_value_in_an_included_template_is_refused(tmp_path):
    env = _env_with(tmp_path, {
        "get_state.ps1.j2": "{% include '_part.ps1.j2' %}\n$ok = {{ inputs.vm | ps }}\n",
        "_part.ps1.j2": "Write-Output {{ inputs.vm }}\n",
    })
    with pytest.raises(UnquotedOutput, match="_part.ps1.j2"):
        render_script("get_state", {"vm": "NDXZOOM"}, env=env)


def test_filtered_template_renders(tmp_path):
    env = _env_with(tmp_path, {"get_state.ps1.j2": "$Vm = {{ inputs.vm | ps }}\n"})
    assert render_script("get_state", {"vm": "NDXZOOM"}, env=env) == "$Vm = 'NDXZOOM'\n"


def test_undefined_value_is_an_error_not_an_empty_string(tmp_path):
    env = _env_with(tmp_path, {"get_state.ps1.j2": "$Vm = {{ inputs.vmm | ps }}\n"})
    with pytest.raises(jinja2.UndefinedError):
        render_script("get_state", {"vm": "NDXZOOM"}, env=env)


def test_syntax_error_in_a_template_is_caught_by_the_parse_check(tmp_path):
    env = _env_with(tmp_path, {"get_state.ps1.j2": "if ($true) {\n    $Vm = {{ inputs.vm | ps }}\n"})
    script = render_script("get_state", {"vm": "NDXZOOM"}, env=env)
    assert syntax_problems(script), "an unclosed block must be reported"


def test_the_real_templates_pass_the_guard():
    env = make_environment(TEMPLATE_DIR)
    for action in ACTIONS:
        env.get_template(f"{action}.ps1.j2")  # raises UnquotedOutput if any template prints raw values


# --- ps_literal: the one door into a script ---------------------------------------------------------

SPECIAL = list(QUOTES + "`$(){}[];#<>\"\n\r\t @|&,=-+*/\\%") + [
    "$(", "<#", "#>", "@'", "'@", '@"', "\r\n", "${x}", "`n", "''", "\u2019\u2019", "--%", "\u00a0", "\u2028"]
TEXT = st.lists(st.one_of(st.sampled_from(SPECIAL),
                          st.characters(exclude_characters="\x00", exclude_categories=("Cs",))),
                max_size=30).map("".join)

_WRAPPERS = {"pipeline", "pipeline_chain", "logical_expression", "bitwise_expression",
             "comparison_expression", "additive_expression", "multiplicative_expression", "format_expression",
             "range_expression", "unary_expression", "key_expression"}


def _named(node: tree_sitter.Node) -> list[tree_sitter.Node]:
    return [c for c in node.children if c.is_named]


def _tokens(node: tree_sitter.Node) -> list[str]:
    return [c.text.decode("utf-8") for c in node.children if not c.is_named]


def evaluate(node: tree_sitter.Node) -> Any:
    """The value PowerShell gives a literal expression, from its parse tree. Anything that is not a plain
    literal (a command, a variable other than $true/$false/$null, a subexpression, a comment) fails."""
    t, kids = node.type, _named(node)
    if t in _WRAPPERS or (t == "array_literal_expression" and len(kids) == 1):
        assert len(kids) == 1 and not [x for x in _tokens(node) if x != ","], (t, node.text)
        return evaluate(kids[0])
    if t == "array_literal_expression":  # a, b, c
        assert set(_tokens(node)) == {","}, node.text
        return [evaluate(k) for k in kids]
    if t == "string_literal":
        assert [k.type for k in kids] == ["verbatim_string_characters"], node.text
        assert kids[0].start_byte == node.start_byte and kids[0].end_byte == node.end_byte
        return read_verbatim(node.text.decode("utf-8"))
    if t == "integer_literal":
        return int(node.text)
    if t == "real_literal":
        return float(node.text)
    if t == "variable":
        return {"$true": True, "$false": False, "$null": None}[node.text.decode()]
    if t == "expression_with_unary_operator":
        ops = _tokens(node)
        assert len(kids) == 1, node.text
        if ops == ["-"]:
            value = evaluate(kids[0])
            assert type(value) in (int, float), node.text
            return -value
        if ops == [","]:  # the unary comma: a one-item array
            return [evaluate(kids[0])]
        assert ops == [] and kids[0].type == "cast_expression", node.text
        return evaluate(kids[0])
    if t == "cast_expression":
        type_lit, operand = kids
        assert type_lit.text == b"[ordered]" and _named(operand)[0].type == "hash_literal_expression"
        return evaluate(operand)
    if t == "array_expression":  # @( ... ): runs its statement and collects the output, unrolling arrays
        statements = node.child_by_field_name("statements")
        if statements is None:
            return []
        (pipeline,) = _named(statements)
        value = evaluate(pipeline)
        return value if isinstance(value, list) else [value]
    if t == "hash_literal_expression":
        out: dict[str, Any] = {}
        for body in kids:
            assert body.type == "hash_literal_body"
            for entry in _named(body):
                assert entry.type == "hash_entry" and _tokens(entry) in (["="], ["=", ";"]), entry.text
                key_node, value_node = _named(entry)
                key = evaluate(key_node)
                assert isinstance(key, str) and key.casefold() not in {k.casefold() for k in out}
                out[key] = evaluate(value_node)
        return out
    raise AssertionError(f"not a plain literal: {t} {node.text!r}")


def assigned_value(literal: str) -> tree_sitter.Node:
    """Parse ``$x = <literal>`` and return the assignment's right-hand side, checking the shape."""
    source = f"$x = {literal}\n"
    root = PARSER.parse(source.encode("utf-8")).root_node
    assert syntax_problems(source) == [], source
    (statements,) = _named(root)
    (pipeline,) = _named(statements)
    (assignment,) = _named(pipeline)
    assert assignment.type == "assignment_expression", assignment.type
    left = assignment.child_by_field_name("value")
    assert left is not None
    target = _named(assignment)[0]
    assert target.type == "left_assignment_expression" and target.text == b"$x"
    return left


def same(a: Any, b: Any) -> bool:
    """Equal, with types: True is not 1, a list is not a dict, order of keys matters."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(TEXT)
def test_any_string_becomes_exactly_one_verbatim_string(value):
    literal = ps_literal(value)
    rhs = assigned_value(literal)
    nodes = [rhs]
    while nodes[-1].type != "string_literal":
        kids = _named(nodes[-1])
        assert len(kids) == 1, f"right-hand side is more than one string: {rhs.text!r}"
        nodes.append(kids[0])
    string = nodes[-1]
    assert string.text.decode("utf-8") == literal == rhs.text.decode("utf-8")
    assert read_verbatim(literal) == value


SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | TEXT)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(VALUES)
def test_any_nested_value_round_trips(value):
    try:
        literal = ps_literal(value)
    except InputError:
        assert _has_case_duplicate_keys(value)
        return
    assert same(evaluate(assigned_value(literal)), value), literal


def _has_case_duplicate_keys(value: Any) -> bool:
    if isinstance(value, dict):
        folded = [k.casefold() for k in value]
        return len(set(folded)) < len(folded) or any(_has_case_duplicate_keys(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_case_duplicate_keys(v) for v in value)
    return False


@pytest.mark.parametrize("value, expected", [
    ([["a"]], [["a"]]), ([[]], [[]]), ([], []), (["a"], ["a"]), ({"k": [[1, 2]]}, {"k": [[1, 2]]}),
    ([{"a": 1}], [{"a": 1}]), ([[1, 2], 3], [[1, 2], 3]),
])
def test_one_item_lists_are_not_unrolled(value, expected):
    assert same(evaluate(assigned_value(ps_literal(value))), expected)


@pytest.mark.parametrize("bad", ["a\x00b", 2**63, -(2**63) - 1, float("nan"), float("inf"), {"A": 1, "a": 2},
                                 object()])
def test_values_powershell_cannot_hold_exactly_are_refused(bad):
    with pytest.raises(InputError):
        ps_literal(bad)


def test_the_reader_rejects_a_literal_that_ends_early():
    with pytest.raises(AssertionError, match="end the string"):
        read_verbatim("'a\u2019b'")
