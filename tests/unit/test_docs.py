"""docs/cli.md keeps up with the CLI: every command, option, exit code, schema and variable;
and the docs stand alone: no design document outside the repository, no broken link."""

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


# -- the docs stand alone: no design document outside the repository, no dead links ------

SELF_CONTAINED = [ROOT / "src", ROOT / "docs", ROOT / "bench", ROOT / "scripts",
                  ROOT / "README.md", ROOT / "SCOPE.md", ROOT / "CHANGELOG.md"]
# A design document users never see, cited by file or by section ("DESIGN §3").
OUTSIDE_DESIGN = re.compile(r"DESIGN\.md|DESIGN\s*§")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)


def _text_files() -> Iterator[Path]:
    for top in SELF_CONTAINED:
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for path in paths:
            if "__pycache__" not in path.parts and path.suffix not in (".pyc", ".qcow2"):
                yield path


def _markdown_files() -> list[Path]:
    return [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md", ROOT / "SCOPE.md",
            ROOT / "CHANGELOG.md"]


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors of a markdown file (lower case, punctuation dropped)."""
    found: set[str] = set()
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        n, candidate = 0, slug
        while candidate in found:  # repeated headings get -1, -2, ...
            n += 1
            candidate = f"{slug}-{n}"
        found.add(candidate)
    return found


def test_no_design_document_outside_the_repository_is_cited() -> None:
    hits = []
    for path in _text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_DESIGN.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()}")
    assert not hits, ("cite docs/architecture.md (or the page that says it) instead of a "
                      "design document users never see:\n" + "\n".join(hits))


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{path.relative_to(ROOT)}: broken links: {broken}"


def test_link_checking_sees_what_it_should() -> None:
    assert "the-store-contract" in _anchors(ROOT / "docs" / "architecture.md")
    assert "the---json-contract" in _anchors(CLI_MD)
    assert LINK.findall("see [a](b.md#c) and ![img](x.png)") == ["b.md#c"]
    assert OUTSIDE_DESIGN.search("as DESIGN §3 says")
    assert OUTSIDE_DESIGN.search("DESIGN.md")
