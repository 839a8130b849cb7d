"""The CLI's parser: a named command builds only its own group, with the same result."""

from __future__ import annotations

import argparse

import pytest

from sandboxer.cli import main


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_maps_to_the_group_that_registers_it() -> None:
    seen: dict[str, str] = {}
    for group in main.GROUPS:
        parser = main.build_parser()
        sub = argparse.ArgumentParser().add_subparsers()
        __import__(f"sandboxer.cli.{group}", fromlist=["register"]).register(
            sub, argparse.ArgumentParser(add_help=False))
        for command in sub.choices:
            seen[command] = group
        assert set(sub.choices) <= set(_commands(parser))
    assert seen == main.GROUP_OF


@pytest.mark.parametrize("words", [
    ["create", "profile.local", "--ttl", "5m", "--label", "a=b", "--json"],
    ["--json", "destroy", "sbx-aaaaaaaaaa", "sbx-bbbbbbbbbb"],
    ["snapshots", "list", "--all"],
    ["cp", "-r", "a", "sbx-aaaaaaaaaa:b"],
    ["ssh", "sbx-aaaaaaaaaa"],
])
def test_one_group_parses_like_all_of_them(words: list[str]) -> None:
    assert len(_commands(main.build_parser(words))) < len(main.GROUP_OF)
    assert vars(main.build_parser(words).parse_args(words)) == \
        vars(main.build_parser().parse_args(words))


@pytest.mark.parametrize("words", [[], ["--help"], ["--version"], ["nope"], ["-h", "list"]])
def test_no_known_command_builds_every_group(words: list[str]) -> None:
    assert set(_commands(main.build_parser(words))) == set(main.GROUP_OF)


def test_a_typo_still_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main.main(["destory", "sbx-aaaaaaaaaa"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'destory'" in err
    assert "'destroy'" in err
    assert "'port-forward'" in err
