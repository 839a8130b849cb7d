"""Entry point: parse, dispatch to a command group, map errors to exit codes once."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any

from sandboxer._typing import override
from sandboxer.early import asks_no_create

# Every command group (a module of sandboxer.cli with ``register``), in help order.
GROUPS = ("profiles", "sandboxes", "snapshots", "reach", "files", "pools", "targets",
          "images", "events", "serve", "tokens", "mcp", "db", "doctor")
# The group that registers each top-level command. A call that names one builds only that
# group's parser: importing and building all fourteen cost every command ~15 ms (a third
# of a thin `destroy`). tests/unit/cli/test_main.py checks this against the full parser.
GROUP_OF = {
    "profiles": "profiles",
    **dict.fromkeys(("create", "get", "list", "extend", "stop", "start", "pause", "resume",
                     "destroy", "reap", "reconcile"), "sandboxes"),
    **dict.fromkeys(("snapshot", "snapshots", "fork"), "snapshots"),
    **dict.fromkeys(("reachability", "ssh", "ssh-config"), "reach"),
    **dict.fromkeys(("cp", "port-forward"), "files"),
    **{g: g for g in ("pools", "targets", "images", "events", "serve", "tokens", "mcp", "db",
                      "doctor")},
}


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, told its width. Left to itself it imports shutil (and with it
    bz2 and lzma: ~2.5 ms) to ask for the terminal's, since argparse builds a formatter for
    each argument added, even in a command that prints no help."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _columns() - 2 if width is None else width)


def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` finds it: $COLUMNS, else the
    terminal of stdout, else 80."""
    import os

    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    @override
    def error(self, message: str) -> Any:  # argparse's own usage errors -> exit 2
        self.print_usage(sys.stderr)
        sys.stderr.write(f"sandboxer: error: {message}\n")
        raise SystemExit(2)


def _untranslated(message: str) -> str:
    return message


def build_parser(words: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The CLI's parser: every group's, or (``words``, a command line) only the group
    of the command it names, when it names a known one."""
    # argparse asks gettext for every help and usage string, and gettext looks for
    # translation files anew on each call (~100 calls, ~15 ms per command here); sand-boxer
    # speaks English and Python ships no argparse translations.
    argparse._ = _untranslated  # type: ignore[attr-defined]
    common = _Parser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print a stable JSON document")
    parser = _Parser(
        prog="sandboxer",
        description="Sandbox custodian: profiles become isolated, leased, SSH-reachable "
        "sandboxes. Exit codes: 0 ok, 1 unexpected, 2 usage, 3 not found, 4 invalid input "
        "or profile, 5 provisioning failed, 6 no target, 7 secrets, 8 conflict.",
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--json", action="store_true", help="print a stable JSON document")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in _groups(words):
        importlib.import_module(f"sandboxer.cli.{name}").register(sub, common)
    return parser


def _groups(words: Sequence[str] | None) -> tuple[str, ...]:
    """Which groups to register for ``words``: the first word that is no option names the
    command; anything else (no command, ``--help``, a typo) gets them all, so that usage
    and errors list every command."""
    if words is None:
        return GROUPS
    first = next((w for w in words if not w.startswith("-")), None)
    if first is None or first not in GROUP_OF or any(w in ("-h", "--help", "--version")
                                                      for w in words[:words.index(first)]):
        return GROUPS
    return (GROUP_OF[first],)


def _version() -> str:
    from sandboxer import __version__

    return f"sandboxer {__version__}"


def _report(error: Exception, as_json: bool) -> int:
    from sandboxer.errors import SandboxerError
    from sandboxer.redaction import redact

    if isinstance(error, SandboxerError):
        code, exit_code, text = error.code, error.exit_code, error.render()
    else:
        code, exit_code, text = "unexpected", 1, f"{type(error).__name__}: {error}"
    text = redact(text)  # the safety net: a resolved secret value never leaves as text
    if as_json:
        from sandboxer.cli.output import emit_json

        emit_json({"schema": "sandboxer.error/v1", "code": code, "exit_code": exit_code,
                   "message": text})
    from sandboxer.cli.output import printable

    sys.stderr.write(f"sandboxer: {printable(text, keep=chr(10))}\n")  # setup output too
    return exit_code


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if words[:1] == ["ssh"] and "--" in words:  # `ssh ID [options] -- CMD...`
        cut = words.index("--")
        words, command = words[:cut], words[cut + 1:]
    if words[:1] == ["create"] and not any(map(asks_no_create, words)):
        from sandboxer.client.service import start_early

        start_early()  # a first create's keeper starts while the rest is parsed
    args = build_parser(words).parse_args(words)
    # No redaction.install() here: registering a value installs the net (redaction.py),
    # and a thin command, whose process never holds one, then imports no logging.
    if command:
        args.command = command
    try:
        result: int = args.handler(args)
        return result
    except KeyboardInterrupt:
        sys.stderr.write("sandboxer: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:  # every error leaves through one mapping
        from sandboxer.errors import SandboxerError

        if not isinstance(e, SandboxerError) and _debug():
            raise
        return _report(e, getattr(args, "json", False))


def _debug() -> bool:
    import os

    return os.environ.get("SANDBOXER_DEBUG") == "1"


if __name__ == "__main__":
    raise SystemExit(main())
