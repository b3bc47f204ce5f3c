"""The Jinja2 environment every PowerShell template is rendered with (step scripts, the template build's
provisioning script): every value enters through the one filter ``ps`` (``quoting.ps_literal``), and a
template that prints anything without it is refused when it is loaded, so a raw value can never be
concatenated into PowerShell. The markers that frame a script's JSON result are defined here, once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jinja2
from jinja2 import nodes

from imaging.core.quoting import ps_literal

RESULT_BEGIN = "<<<IMAGING-RESULT>>>"
RESULT_END = "<<<END-IMAGING-RESULT>>>"


class UnquotedOutput(jinja2.TemplateError):
    """A template prints a value without the ``ps`` filter."""


def unquoted_outputs(ast: nodes.Template) -> list[tuple[int, str]]:
    """Every place in a parsed template that prints something other than ``<expr> | ps``.

    Returns (line number, description) pairs; an empty list means the template is safe. Filter blocks are
    refused outright, because they transform already-quoted text after the fact.
    """
    problems: list[tuple[int, str]] = []
    for out in ast.find_all(nodes.Output):
        for child in out.nodes:
            if isinstance(child, nodes.TemplateData):
                continue
            if isinstance(child, nodes.Filter) and child.name == "ps" and child.node is not None:
                continue
            problems.append((child.lineno, f"'{{{{ ... }}}}' without '| ps' ({type(child).__name__})"))
    for block in ast.find_all(nodes.FilterBlock):
        problems.append((block.lineno, "'{% filter %}' blocks are not allowed"))
    return problems


class _CheckedLoader(jinja2.FileSystemLoader):
    """A file loader that refuses any template (including included or extended ones) printing raw values."""

    def get_source(self, environment: jinja2.Environment, template: str
                   ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        problems = unquoted_outputs(environment.parse(source, template, filename))
        if problems:
            where = "; ".join(f"line {line}: {what}" for line, what in problems)
            raise UnquotedOutput(f"{filename}: every value must pass through '| ps' ({where})")
        return source, filename, uptodate


def _ps_filter(value: object) -> str:
    """``quoting.ps_literal``, except that a missing value fails with Jinja's own message naming it."""
    if isinstance(value, jinja2.Undefined):
        str(value)  # StrictUndefined raises UndefinedError ("'dict object' has no attribute 'x'")
    return ps_literal(value)


def make_environment(template_dir: Path | str) -> jinja2.Environment:
    """The one Jinja2 environment for PowerShell templates: strict, unescaped, one quoting filter."""
    env = jinja2.Environment(
        loader=_CheckedLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.clear()
    env.filters["ps"] = _ps_filter
    env.globals["result_begin"] = RESULT_BEGIN
    env.globals["result_end"] = RESULT_END
    return env
