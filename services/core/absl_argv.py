"""absl's command-line syntax, rewritten into the argparse syntax our server parsers take.

Scripts written for tensorflow_model_server and other Google C++ servers use absl's flag syntax. Before argparse
sees the command line, ``expand_argv`` rewrites it using the parser's own options (``OptionIndex``):

- ``--flagfile=FILE[,FILE...]`` (or ``--flagfile FILE``) is replaced, in place, by the flags of each file, so flags
  on the command line and in files are taken in order and a later one wins;
- ``-name[=value]`` becomes ``--name[=value]`` when ``--name`` is an option of the parser (other single-dash
  arguments, ``-h`` or a negative number, are left to argparse);
- ``--noname`` becomes ``--name=false`` when ``--name`` is a boolean flag (``cli_flags.BoolFlagAction``);
- ``--name value`` of an option taking one value becomes ``--name=value``, so a value that starts with a dash
  (``--delta -1``) is never read as a flag. A next argument that is itself one of the parser's flags is not taken
  as the value: argparse then reports the missing value.

A flagfile, as absl reads it: one flag per line, leading and trailing blanks dropped; blank lines and lines whose
first character is ``#`` are skipped; every other line must start with ``-`` (``--`` alone, positional arguments
and ``//`` comments are refused, naming file and line). A flag that takes a value takes it after ``=`` on its own
line (``--port 8500`` on one line is refused; absl reads it as a flag named ``port 8500``). A relative path is
relative to the working directory, as for absl, also in a file named by another file. Unlike absl, a file that
names itself, directly or through others, is refused. Anything else (an unknown flag, a bad value) is left for
argparse to report, so errors keep their usual form (exit 2 naming the flag).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from monolith_serving.core.cli_flags import BoolFlagAction

__all__ = ["AbslArgvError", "OptionIndex", "expand_argv", "parse_absl_args"]

FLAGFILE = "flagfile"
_NEGATION = "no"


class AbslArgvError(ValueError):
    """The command line cannot be rewritten (a flagfile is missing, unreadable, malformed or cyclic); the message
    names the file (and line) or the argument."""


@dataclass(frozen=True)
class _Option:
    takes_value: bool  # exactly one value: --name=value, or --name value
    is_bool: bool  # a BoolFlagAction: bare --name is true, --noname false


@dataclass(frozen=True)
class OptionIndex:
    """The parser's long options by name without dashes (``model_config_file``), what the rewriting must know."""

    options: Mapping[str, _Option]

    @classmethod
    def from_parser(cls, parser: argparse.ArgumentParser) -> OptionIndex:
        # argparse keeps every option string of every action (sub-parsers aside) in this table; it has no public
        # accessor for it.
        actions: Mapping[str, argparse.Action] = parser._option_string_actions
        return cls(
            {
                option[2:]: _Option(takes_value=action.nargs in (None, 1), is_bool=isinstance(action, BoolFlagAction))
                for option, action in actions.items()
                if option.startswith("--") and len(option) > 2
            }
        )

    def get(self, name: str) -> _Option | None:
        return self.options.get(name)

    def negated_bool(self, name: str) -> str | None:
        """``noname`` -> ``name`` when ``--name`` is a boolean flag of the parser (absl's negative form)."""
        if not name.startswith(_NEGATION):
            return None
        positive = name.removeprefix(_NEGATION)
        option = self.options.get(positive)
        return positive if option is not None and option.is_bool else None

    def names_a_flag(self, arg: str) -> bool:
        """Whether ``arg`` is a flag of the parser in any spelling the rewriting takes (``-x``, ``--x=1``,
        ``--nox``, ``--flagfile``)."""
        if not arg.startswith("-"):
            return False
        name = _split(arg)[0]
        return name == FLAGFILE or name in self.options or self.negated_bool(name) is not None


def _split(arg: str) -> tuple[str, str, str]:
    """``--name=value`` or ``-name=value`` -> (name, "=", value); the separator is empty when there is no ``=``."""
    return arg[2:].partition("=") if arg.startswith("--") else arg[1:].partition("=")


@dataclass(frozen=True)
class _Source:
    """Where arguments come from: the command line (``file`` None) or a flagfile; for messages and the rules that
    differ (a flagfile holds flags only)."""

    file: Path | None
    lines: tuple[int, ...] = ()  # a flagfile: the line number of each argument

    def where(self, index: int) -> str:
        if self.file is None:
            return "command line"
        return f"flagfile {str(self.file)!r} line {self.lines[index]}"


def expand_argv(argv: Sequence[str], options: OptionIndex) -> list[str]:
    """``argv`` in the syntax argparse takes (see the module docstring). Raises AbslArgvError for a flagfile
    problem or a ``--noname=value``; reads the flagfiles named, nothing else."""
    return _expand(list(argv), _Source(None), options, stack=())


def parse_absl_args(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``parser.parse_args`` of ``argv`` in absl's syntax; a flagfile problem is a usage error (exit 2) too."""
    try:
        expanded = expand_argv(argv, OptionIndex.from_parser(parser))
    except AbslArgvError as error:
        parser.error(str(error))
    return parser.parse_args(expanded)


def _expand(args: list[str], source: _Source, options: OptionIndex, stack: tuple[Path, ...]) -> list[str]:
    out: list[str] = []
    index = 0
    while index < len(args):
        arg, where = args[index], source.where(index)
        index += 1
        if arg == "--" or not arg.startswith("-") or arg == "-":
            if source.file is not None:
                raise AbslArgvError(f"{where}: not a flag: {arg!r} (a flagfile holds one -flag or --flag per line)")
            if arg == "--":  # the rest is positional, as for argparse and absl
                out.extend(args[index - 1 :])
                break
            out.append(arg)
            continue
        name, equals, value = _split(arg)
        if source.file is not None and any(c.isspace() for c in name):
            raise AbslArgvError(f"{where}: {arg!r}: write one flag per line as --name=value")
        option = options.get(name)
        if name == FLAGFILE:
            if not equals:
                if source.file is not None or index == len(args) or options.names_a_flag(args[index]):
                    raise AbslArgvError(f"{where}: --{FLAGFILE} needs a file name (--{FLAGFILE}=FILE)")
                value = args[index]
                index += 1
            for path in _flagfile_paths(value, where):
                out.extend(_read_flagfile(path, options, stack, where))
        elif option is not None:
            if equals:
                out.append(f"--{name}={value}")
            elif option.takes_value and source.file is not None:
                raise AbslArgvError(f"{where}: --{name} needs a value on its line (--{name}=VALUE)")
            elif option.takes_value and index < len(args) and not options.names_a_flag(args[index]):
                out.append(f"--{name}={args[index]}")
                index += 1
            else:
                out.append(f"--{name}")  # argparse takes it, or reports the value missing
        elif (negated := options.negated_bool(name)) is not None:
            if equals:
                raise AbslArgvError(f"{where}: {arg!r}: the negative form --{name} takes no value")
            out.append(f"--{negated}=false")
        else:
            out.append(arg)  # not a flag of the parser: argparse reports it
    return out


def _flagfile_paths(value: str, where: str) -> list[Path]:
    # absl's --flagfile is a list: comma-separated names, none of them empty; an empty value names no file.
    if not value:
        return []
    names = value.split(",")
    if not all(names):
        raise AbslArgvError(f"{where}: --{FLAGFILE}={value}: an empty file name")
    return [Path(name) for name in names]


def _read_flagfile(path: Path, options: OptionIndex, stack: tuple[Path, ...], where: str) -> list[str]:
    identity = path.resolve()  # a cycle through a symlink or another spelling of the path is still seen
    if identity in stack:
        chain = " -> ".join(str(p) for p in (*stack, identity))
        raise AbslArgvError(f"{where}: flagfile cycle: {chain}")
    try:
        # utf-8-sig: a byte order mark would otherwise make the first line "not a flag".
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise AbslArgvError(f"{where}: cannot read flagfile {str(path)!r}: {reason}") from None
    args: list[str] = []
    lines: list[int] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            args.append(line)
            lines.append(number)
    return _expand(args, _Source(path, tuple(lines)), options, (*stack, identity))
