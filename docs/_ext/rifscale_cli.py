"""The ``rifscale-cli`` directive: the command-line reference, made from the argparse
parser of :mod:`rifscale.cli` at build time (so it never disagrees with ``--help``).

One section per subcommand, in the parser's order: its help line, its usage, and a list
of its arguments with their metavars, help, choices and defaults. No third-party
extension is needed; this reads the parser the way ``argparse``'s own help formatter
does.
"""

from __future__ import annotations

import argparse

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The action's help text as ``--help`` prints it (``%(default)s`` expanded), plus
    its choices and default when the text does not give them."""
    text = parser._get_formatter()._expand_help(action) if action.help else ""
    extra = []
    if action.choices is not None and action.metavar is not None:  # else the invocation lists them
        extra.append("one of " + ", ".join(f"``{c}``" for c in action.choices))
    default = action.default
    if (action.option_strings and default not in (None, False, argparse.SUPPRESS) and action.nargs != 0
            and "default" not in text):
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        extra.append(f"default ``{shown}``")
    if action.required and action.option_strings:
        extra.append("required")
    return (text + (" (" + "; ".join(extra) + ")" if extra else "")).strip()


def _invocation(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    return parser._get_formatter()._format_action_invocation(action)


class CliDirective(SphinxDirective):
    """``.. rifscale-cli::`` — every subcommand of ``rifscale`` as a section."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        from rifscale import cli
        from rifscale.cli import build_parser

        self.env.note_dependency(cli.__file__)  # an edited parser rebuilds the page
        parser = build_parser()
        out: list[nodes.Node] = [self._arguments(parser, title="Options of every command")]
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        helps = {a.dest: a.help for a in sub._choices_actions}
        for name, command in sub.choices.items():
            section = nodes.section(ids=[f"rifscale-{name}"], names=[f"rifscale {name}"])
            section += nodes.title(text=f"rifscale {name}")
            if helps.get(name):
                section += nodes.paragraph(text=helps[name][0].upper() + helps[name][1:] + ".")
            usage = command.format_usage().removeprefix("usage: ").strip()
            section += nodes.literal_block(usage, usage, language="text")
            section += self._arguments(command)
            out.append(section)
        return out

    def _arguments(self, parser: argparse.ArgumentParser, title: str | None = None) -> nodes.Node:
        items = nodes.definition_list()
        for action in parser._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, (argparse._HelpAction,
                                                                        argparse._SubParsersAction)):
                continue
            item = nodes.definition_list_item()
            item += nodes.term("", "", nodes.literal(text=_invocation(parser, action)))
            definition = nodes.definition()
            para = nodes.paragraph()
            text = _help(parser, action)
            # ``x`` spans of the text (choices, defaults) as literals
            for k, part in enumerate(text.split("``")):
                para += nodes.literal(text=part) if k % 2 else nodes.Text(part)
            definition += para
            item += definition
            items += item
        if title is None:
            return items
        container = nodes.container()
        container += nodes.rubric(text=title)
        container += items
        return container


def setup(app):
    app.add_directive("rifscale-cli", CliDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
