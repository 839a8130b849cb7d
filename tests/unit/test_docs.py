"""docs/cli.md keeps up with the CLI: every command, option, exit code, schema and variable."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxer.cli.main import build_parser
from sandboxer.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parents[2]
CLI_MD = ROOT / "docs" / "cli.md"
SRC = ROOT / "src" / "sandboxer"


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:  # type: ignore[type-arg]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command path ("profiles list", "create", ...) with its parser."""
    sub = _subparsers(parser)
    if sub is None:
        yield " ".join(prefix), parser
        return
    for name, child in sub.choices.items():
        yield from _commands(child, (*prefix, name))


COMMANDS = dict(_commands(build_parser()))


@pytest.fixture(scope="module")
def text() -> str:
    return CLI_MD.read_text(encoding="utf-8")


def _section(text: str, command: str) -> str:
    """The part of cli.md under the heading ### `sandboxer COMMAND`."""
    heading = f"### `sandboxer {command}`"
    assert heading in text, f"docs/cli.md has no section {heading!r}"
    body = text.split(heading, 1)[1]
    return re.split(r"^#{2,3} ", body, maxsplit=1, flags=re.MULTILINE)[0]


def test_commands_were_found() -> None:
    assert {"create", "destroy", "profiles list", "reachability show"} <= COMMANDS.keys()


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_and_option_is_documented(text: str, command: str) -> None:
    section = _section(text, command)
    for action in COMMANDS[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flags = [f for f in action.option_strings if f.startswith("--")]
        if flags:
            assert any(f"`{f}" in section for f in flags), (
                f"docs/cli.md: `sandboxer {command}` does not document {flags[0]}"
            )


def test_every_exit_code_is_in_the_table(text: str) -> None:
    rows = dict(re.findall(r"^\| (\d+) \| ([^|]+?) \|", text, flags=re.MULTILINE))
    documented = {int(code): meaning for code, meaning in rows.items()}
    assert documented == EXIT_CODES, "the exit-code table in docs/cli.md drifted from errors.py"


def test_every_schema_is_documented(text: str) -> None:
    schemas = {
        m
        for path in SRC.rglob("*.py")
        for m in re.findall(r"sandboxer\.[a-z-]+/v\d+", path.read_text(encoding="utf-8"))
    }
    assert "sandboxer.sandbox/v1" in schemas
    missing = sorted(s for s in schemas if f"`{s}`" not in text)
    assert not missing, f"docs/cli.md does not name these JSON schemas: {missing}"


def test_every_environment_variable_is_documented(text: str) -> None:
    names = {
        m
        for path in SRC.rglob("*.py")
        for m in re.findall(r"\bSANDBOXER_[A-Z0-9_]*[A-Z0-9]\b", path.read_text(encoding="utf-8"))
    }
    assert "SANDBOXER_HOME" in names
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"docs/cli.md does not document these variables: {missing}"
