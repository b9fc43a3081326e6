"""What every command line of the project shares: the help layout (real defaults shown, never "(default: None)") and
old flag spellings that keep working with a one-line note, so commands written in committed docs still run."""

from __future__ import annotations

import argparse
import sys


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`ArgumentDefaultsHelpFormatter` that adds "(default: X)" only where X is a real value (not None, False or an
    empty list) and the help text does not already give the default in words."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default is None or action.default is False or action.default == [] or action.default
                is argparse.SUPPRESS or "default" in text.lower()):
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr, as every other refusal of the project's commands
    (exit status 2), instead of the usage block and then the message."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parser(prog: str, doc: str | None, **kwargs) -> argparse.ArgumentParser:
    """A command's parser: its module docstring's first line as the description, the project's help layout."""
    return Parser(prog=prog, description=(doc or "").split("\n")[0], formatter_class=HelpFormatter, **kwargs)


class _Renamed(argparse.Action):
    """An old spelling of a flag: stores into the new flag's destination and says, once, which name to use."""

    def __init__(self, option_strings, dest, new: str = "", **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"note: {option_string} is renamed {self.new}; the old name still works for now", file=sys.stderr)
        setattr(namespace, self.dest, values)


def renamed(group: argparse._ActionsContainer, old: str, new: str, dest: str, **kwargs) -> None:
    """Accept `old` (hidden from --help) as a spelling of the flag `new` whose destination is `dest`."""
    group.add_argument(old, dest=dest, action=_Renamed, new=new, help=argparse.SUPPRESS, default=argparse.SUPPRESS,
                       **kwargs)
