"""Every flag an operator can pass to ``monolith-serving <command>`` is named in that command's doc, and where a
doc states a flag's default (a table's ``default`` column, a ``[--flag value]`` of a usage block) it is the
code's default.

The parsers are the real ones, built as ``cli.main`` builds them (common flags, then the command's
``configure``). A flag counts as documented when its underscore spelling (``--num_ps``, however the code spells
it) appears in the command's doc; each alias of a flag must appear too. tensorflow_model_server's compatibility
flags (``core.cli_flags.add_tfs_compat_flags``) are hidden from ``--help`` on purpose and documented as a group
by docs/entry.md ("Command line") and ``TFS_COMPAT_FLAGS``; the client's absl negations (``--nohas_sort_id``) are
hidden too and documented by their rule in docs/client.md; no other flag may be hidden.
"""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

from monolith_serving.cli import COMMANDS
from monolith_serving.core.cli_flags import TFS_COMPAT_FLAGS, add_common_flags

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README = ROOT / "README.md"

# The doc of each command (cli.COMMANDS); a command without one fails test_every_command_has_a_doc.
COMMAND_DOCS: Mapping[str, Path] = {
    "export-demo": DOCS / "formats.md",
    "health": DOCS / "deploy.md",
    "ssl-config": DOCS / "entry.md",
    "entry": DOCS / "entry.md",
    "demo": DOCS / "entry.md",
    "client": DOCS / "client.md",
    "ps": DOCS / "ps.md",
    "unified": DOCS / "unified.md",
    "dense": DOCS / "dense.md",
    "proxy": DOCS / "proxy.md",
    "agent": DOCS / "agent.md",
    "ctl": DOCS / "agent.md",
    "replica-manager": DOCS / "replica_manager.md",
    "replicas": DOCS / "replica_manager.md",
    "model-manager": DOCS / "model_manager.md",
}

# Flags every command (logging) or every server (core.cli_flags.add_server_flags) takes, documented once.
SHARED_FLAG_DOCS: Mapping[str, Path] = {
    "--log_format": README,
    "--log_level": README,
    "--blas_threads": DOCS / "entry.md",
    "--grpc_channel_arguments": DOCS / "entry.md",
}


@cache
def command_parser(name: str) -> argparse.ArgumentParser:
    command = next(c for c in COMMANDS if c.name == name)
    parser = argparse.ArgumentParser(prog=f"monolith-serving {name}")
    add_common_flags(parser)
    importlib.import_module(command.module).configure(parser)
    return parser


def _options(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """Every option of the parser and of its sub-command parsers (argparse's own --help excluded)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_parser in action.choices.values():
                yield from _options(sub_parser)
        elif action.option_strings and not isinstance(action, argparse._HelpAction):
            yield action


def canonical(option: str) -> str:
    """``--num-ps`` -> ``--num_ps``: the spelling the docs use."""
    return "--" + option[2:].replace("-", "_")


def is_hidden(action: argparse.Action) -> bool:
    return action.help == argparse.SUPPRESS


def visible_flags(parser: argparse.ArgumentParser) -> list[str]:
    return sorted({canonical(o) for a in _options(parser) if not is_hidden(a) for o in a.option_strings})


def flag_actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {canonical(o): a for a in _options(parser) if not is_hidden(a) for o in a.option_strings}


def names_flag(text: str, flag: str) -> bool:
    # --model_config_file must not be found inside --model_config_file_poll_wait_seconds.
    return re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text) is not None


def undocumented_flags(parser: argparse.ArgumentParser, doc: str, shared: Mapping[str, str]) -> list[str]:
    """The parser's visible flags named neither in ``doc`` nor, for a shared flag, in its shared doc's text."""
    return [
        flag
        for flag in visible_flags(parser)
        if not names_flag(doc, flag) and not (flag in shared and names_flag(shared[flag], flag))
    ]


# -- documented defaults -----------------------------------------------------------------------------------------

_UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}
_NUMBER = re.compile(r"^([-+]?\d[\d,]*(?:\.\d+)?)(?:\s*(KiB|MiB|GiB))?(?![\w.])")


def stated_default_matches(stated: str, default: object) -> bool:
    """Whether a doc's default text (``0 (off)``, ``1 GiB``, ```0.0.0.0` ``, ``true``) starts with ``default``.

    A default of None or empty is one the code works out (``$PORT3``, agent.conf's, ...): any wording fits."""
    text = stated.replace("`", "").strip()
    if default is None or default in ("", (), []):
        return True
    if isinstance(default, bool):
        return text.split(" ", 1)[0].lower() == ("true" if default else "false")
    if isinstance(default, int | float):
        match = _NUMBER.match(text)
        if match is None:
            return False
        number = float(match.group(1).replace(",", "")) * _UNITS.get(match.group(2) or "", 1)
        return number == float(default)
    if isinstance(default, str):
        return re.match(rf"{re.escape(default)}(?![\w.:/-])", text) is not None
    return True  # a parsed structure (export-demo's --tables): the docs word it


@dataclass(frozen=True)
class StatedDefault:
    where: str  # doc and line, for the failure message
    commands: tuple[str, ...]  # whose parser the flag is looked up in
    flag: str
    text: str


def _cells(line: str) -> list[str]:
    # A cell may hold an escaped pipe (`--output text\|json`).
    return [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def _split_cell(text: str, count: int) -> list[str]:
    """``5 / 300`` for a row of two flags; one default for the whole row otherwise."""
    parts = [part.strip() for part in text.split(" / ")]
    return parts if len(parts) == count else [text] * count


def table_defaults(doc: str, where: str, commands: tuple[str, ...]) -> Iterator[StatedDefault]:
    """Rows of markdown tables whose second column is headed ``default`` and whose first names flags."""
    lines = doc.splitlines()
    for number, line in enumerate(lines):
        if not line.startswith("|") or number + 1 >= len(lines) or not lines[number + 1].startswith("| ---"):
            continue
        header = _cells(line)
        if len(header) < 2 or header[1] != "default":
            continue
        for row_number in range(number + 2, len(lines)):
            row = lines[row_number]
            if not row.startswith("|"):
                break
            cells = _cells(row)
            flags = [canonical(flag) for flag in re.findall(r"`(--[\w-]+)", cells[0])]
            for flag, text in zip(flags, _split_cell(cells[1], len(flags)), strict=True):
                yield StatedDefault(f"{where}:{row_number + 1}", commands, flag, text)


_USAGE = re.compile(r"^\s*monolith-serving ([\w-]+)")
# [--flag value]: one value, not a placeholder (those have capitals: N, FILE, H:P) nor a choice list (a|b).
_BRACKETED_VALUE = re.compile(r"\[(--[\w-]+) ([^\]\s|A-Z]+)\]")


def usage_defaults(doc: str, where: str) -> Iterator[StatedDefault]:
    """``[--flag value]`` in fenced usage blocks: ``monolith-serving <command> ...`` and its indented lines."""
    command: str | None = None
    fenced = False
    for number, line in enumerate(doc.splitlines()):
        if line.startswith("```"):
            fenced, command = not fenced, None
            continue
        if not fenced:
            continue
        usage = _USAGE.match(line)
        if usage is not None:
            command = usage.group(1)
        elif not line.startswith((" ", "\t")):
            command = None
        if command is None:
            continue
        for flag, value in _BRACKETED_VALUE.findall(line):
            yield StatedDefault(f"{where}:{number + 1}", (command,), canonical(flag), value)


def default_problems(stated: StatedDefault) -> list[str]:
    """A stated default that differs from the code's, or names a flag none of the commands takes."""
    known = [c.name for c in COMMANDS]
    actions = [
        flag_actions(command_parser(command)).get(stated.flag) for command in stated.commands if command in known
    ]
    found = [action for action in actions if action is not None]
    if not found:
        return [f"{stated.where}: {stated.flag} is not a flag of {' or '.join(stated.commands)}"]
    return [
        f"{stated.where}: {stated.flag} documented default {stated.text!r}, code default {action.default!r}"
        for action in found
        if not stated_default_matches(stated.text, action.default)
    ]


def doc_commands(doc: Path) -> tuple[str, ...]:
    return tuple(name for name, path in COMMAND_DOCS.items() if path == doc)


def all_default_problems(doc: Path, text: str) -> list[str]:
    where = str(doc.relative_to(ROOT))
    stated = [*table_defaults(text, where, doc_commands(doc)), *usage_defaults(text, where)]
    return [problem for default in stated for problem in default_problems(default)]


def shared_texts() -> dict[str, str]:
    return {flag: path.read_text() for flag, path in SHARED_FLAG_DOCS.items()}


DOCUMENTED = sorted({*COMMAND_DOCS.values(), README})


# -- the tests ---------------------------------------------------------------------------------------------------


def test_every_command_has_a_doc() -> None:
    assert set(COMMAND_DOCS) == {c.name for c in COMMANDS}
    for path in COMMAND_DOCS.values():
        assert path.is_file(), path


def test_shared_flags_are_real_and_in_their_shared_doc() -> None:
    for flag, path in SHARED_FLAG_DOCS.items():
        taken_by = [c.name for c in COMMANDS if flag in visible_flags(command_parser(c.name))]
        assert len(taken_by) > 1, f"{flag} is not shared: {taken_by}"
        assert names_flag(path.read_text(), flag), f"{flag} is not in {path}"


def absl_negations(parser: argparse.ArgumentParser) -> set[str]:
    """The client's hidden ``--no<flag>`` (absl's negative spelling) of each visible boolean ``--<flag>``."""
    visible = flag_actions(parser)
    return {
        option
        for action in _options(parser)
        if is_hidden(action) and isinstance(action, argparse._StoreFalseAction)
        for option in action.option_strings
        if (positive := visible.get(canonical("--" + option[4:]))) is not None and positive.dest == action.dest
    }


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_only_the_tensorflow_model_server_flags_are_hidden(command: str) -> None:
    tfs = {spelling for name in TFS_COMPAT_FLAGS for spelling in (f"--{name}", f"--{name.replace('_', '-')}")}
    parser = command_parser(command)
    hidden = {o for a in _options(parser) if is_hidden(a) for o in a.option_strings} - absl_negations(parser)
    assert hidden <= tfs, f"hidden from --help and from this test: {sorted(hidden - tfs)}"


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_absl_negations_are_documented_by_their_rule(command: str) -> None:
    negations = {canonical(option) for option in absl_negations(command_parser(command))}
    doc = COMMAND_DOCS[command].read_text()
    # The doc states the rule ("Booleans take absl's spellings: ... --nohas_sort_id") with one example.
    assert not negations or any(names_flag(doc, negation) for negation in negations)


def test_the_hidden_flags_are_documented_as_a_group() -> None:
    entry = (DOCS / "entry.md").read_text()
    assert "TFS_COMPAT_FLAGS" in entry
    assert "**tensorflow_model_server command lines.**" in entry


@pytest.mark.parametrize("command", [c.name for c in COMMANDS])
def test_every_flag_is_in_the_command_doc(command: str) -> None:
    doc = COMMAND_DOCS[command]
    missing = undocumented_flags(command_parser(command), doc.read_text(), shared_texts())
    assert not missing, f"monolith-serving {command}: flags not in {doc.relative_to(ROOT)}: {missing}"


@pytest.mark.parametrize("doc", DOCUMENTED, ids=lambda path: path.name)
def test_documented_defaults_are_the_code_defaults(doc: Path) -> None:
    problems = all_default_problems(doc, doc.read_text())
    assert not problems, "\n".join(problems)


# The checks above pass on the real docs; these show they fail when a doc is wrong.


def _without(text: str, flag: str) -> str:
    return re.sub(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", "--gone", text)


def test_a_flag_missing_from_its_doc_is_reported() -> None:
    text = (DOCS / "ps.md").read_text()
    assert undocumented_flags(command_parser("ps"), _without(text, "--max_pending_sync_bytes"), shared_texts()) == [
        "--max_pending_sync_bytes"
    ]


def test_an_alias_missing_from_its_doc_is_reported() -> None:
    text = (DOCS / "entry.md").read_text()
    missing = undocumented_flags(command_parser("entry"), _without(text, "--archon_entry_to_ps_rpc_retry"), {})
    assert "--archon_entry_to_ps_rpc_retry" in missing


def test_a_shared_flag_missing_from_its_shared_doc_is_reported() -> None:
    shared = {**shared_texts(), "--blas_threads": _without(shared_texts()["--blas_threads"], "--blas_threads")}
    assert "--blas_threads" in undocumented_flags(command_parser("unified"), (DOCS / "unified.md").read_text(), shared)


TABLE = "| flag | default | meaning |\n| --- | --- | --- |\n"
NONE = "\N{EN DASH}"  # the docs' "no default"


@pytest.mark.parametrize(
    ("doc", "text", "problem"),
    [
        (
            "ps.md",
            TABLE + "| `--max_pending_sync_bytes` | 2 GiB | queued bytes |\n",
            "'2 GiB', code default 1073741824",
        ),
        ("proxy.md", TABLE + "| `--port` / `--host` | 8500 / `127.0.0.1` | x |\n", "--host documented default"),
        ("agent.md", TABLE + "| `--max_restarts` / `--restart_window_s` | 5 / 600 | x |\n", "--restart_window_s"),
        ("ps.md", TABLE + f"| `--model_version_policy` | {NONE} | x |\n", "--model_version_policy"),
        ("entry.md", "```\nmonolith-serving entry --port P\n    [--fetch_ps_timeout_ms 300]\n```\n", "'300'"),
        ("unified.md", "```\nmonolith-serving unified [--coalesce_requests false]\n```\n", "code default True"),
        ("entry.md", "```\nmonolith-serving entry [--grace_seconds 2]\n```\n", "--grace_seconds is not a flag"),
        ("agent.md", TABLE + "| `--drain_seconds` | 2 | x |\n", "--drain_seconds is not a flag of agent or ctl"),
    ],
)
def test_a_wrong_documented_default_is_reported(doc: str, text: str, problem: str) -> None:
    problems = all_default_problems(DOCS / doc, text)
    assert len(problems) == 1 and problem in problems[0], problems


@pytest.mark.parametrize(
    ("doc", "text"),
    [
        ("ps.md", TABLE + "| `--max_pending_sync_bytes` | 1 GiB | queued bytes |\n| `--num_ps` | 0 (no check) | x |\n"),
        ("proxy.md", TABLE + f"| `--port` / `--host` | 8500 / `0.0.0.0` | x |\n| `--conf` | {NONE} | agent.conf |\n"),
        ("entry.md", "```\nmonolith-serving entry --port P\n    [--fetch_ps_timeout_ms 200] [--grace_s 2]\n```\n"),
        # placeholders and choice lists are not defaults, nor is anything outside a fenced usage block
        ("client.md", "```\nmonolith-serving client predict [--input_type a|b] [--rows R] [--version V]\n```\n"),
        ("entry.md", "`monolith-serving entry [--grace_s 9]`\n"),
    ],
)
def test_a_right_documented_default_passes(doc: str, text: str) -> None:
    assert all_default_problems(DOCS / doc, text) == []


@pytest.mark.parametrize(
    ("doc", "kind"),
    [
        ("ps.md", "table"),
        ("proxy.md", "table"),
        ("agent.md", "table"),
        ("model_manager.md", "table"),
        ("entry.md", "usage"),
        ("unified.md", "usage"),
        ("dense.md", "usage"),
    ],
)
def test_the_docs_defaults_are_found(doc: str, kind: str) -> None:
    """The default checks read these docs' flag tables and usage blocks (a format change would skip them)."""
    path = DOCS / doc
    found = (
        list(table_defaults(path.read_text(), doc, doc_commands(path)))
        if kind == "table"
        else list(usage_defaults(path.read_text(), doc))
    )
    assert len(found) >= 2, found


@pytest.mark.parametrize(
    ("stated", "default", "matches"),
    [
        ("0 (off)", 0, True),
        ("2,097,152", 2097152, True),
        ("1 GiB", 1 << 30, True),
        ("33554432 (32 MiB; was 256 MiB)", 33554432, True),
        ("1", 1.0, True),
        ("10", 1.0, False),
        ("1.5", 1, False),
        ("\N{EN DASH}", 1, False),  # the docs' "none"
        ("`0.0.0.0`", "0.0.0.0", True),
        ("`0.0.0.0.1`", "0.0.0.0", False),
        ("latest", "latest", True),
        ("latest_once", "latest", False),
        ("true", True, True),
        ("false", True, False),
        ("`$PORT3`, else 8500", None, True),
    ],
)
def test_stated_default_matches(stated: str, default: object, matches: bool) -> None:
    assert stated_default_matches(stated, default) is matches
