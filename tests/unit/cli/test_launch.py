"""The command that starts Python without ``site`` (cli/launch.py), and its parser's
formatter that does without shutil."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import sandboxer
from sandboxer import early
from sandboxer.cli import launch, main

ROOT = Path(sandboxer.__file__).resolve().parents[1]


def _python_s(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` under ``python -S`` with this package's directory on sys.path, as the
    written command starts."""
    return subprocess.run([sys.executable, "-S", "-c",
                           f"import sys; sys.path.append({str(ROOT)!r})\n{code}"],
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_written_command_starts_python_without_site(tmp_path: Path) -> None:
    target = launch.install(tmp_path, sys.executable, ROOT)
    assert target == tmp_path / "sandboxer"
    assert target.read_text().splitlines()[0] == f"#!{sys.executable} -S"
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["sandboxer"]  # no temporary left
    done = subprocess.run([str(target), "--version"], capture_output=True, text=True,
                          timeout=60, check=False)
    assert (done.returncode, done.stdout) == (0, f"sandboxer {sandboxer.__version__}\n")


def test_an_in_process_command_loads_site_when_it_first_needs_it(tmp_path: Path) -> None:
    target = launch.install(tmp_path, sys.executable, ROOT)
    env = {**os.environ, "SANDBOXER_HOME": str(tmp_path / "home")}
    done = subprocess.run([str(target), "profiles", "list", "--json"], capture_output=True,
                          text=True, timeout=60, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "profile.local" in {p["id"] for p in json.loads(done.stdout)["items"]}


def test_site_waits_for_a_module_only_site_packages_holds() -> None:
    done = _python_s(
        "from sandboxer import sitehook\n"
        "sitehook.install(sys.path[-1])\n"
        # Misses of the standard library's own probes: ntpath tries _winapi, copy and
        # pickle try Jython's org.python.core (dataclasses imports copy).
        "import ntpath, copy, pickle, dataclasses, sandboxer.client.service, sandboxer.cli.main\n"
        "print('site' in sys.modules)\n"
        "import yaml\n"
        "print('site' in sys.modules, yaml.safe_load('a: 1'))\n"
        "print(sys.path.index(sys.path[-1]) > max(\n"
        "    i for i, p in enumerate(sys.path) if p.endswith('-packages')))\n"
        "try:\n"
        "    import sandboxer_no_such_module\n"
        "except ImportError:\n"
        "    print('missing')\n")
    assert done.stdout.splitlines() == ["False", "True {'a': 1}", "True", "missing"], \
        done.stderr


def test_a_look_at_installed_entry_points_loads_site_first() -> None:
    done = _python_s(
        "from sandboxer import sitehook\n"
        "sitehook.install(sys.path[-1])\n"
        "from sandboxer.entrypoints import registered\n"
        "print('site' in sys.modules)\n"
        "found = registered('sandboxer.extensions')\n"
        "print('site' in sys.modules, 'ext.local' in found)\n"
        "import site\n"
        "print(any(p in sys.path for p in site.getsitepackages()))\n")
    assert done.stdout.splitlines() == ["False", "True True", "True"], done.stderr


def test_the_parser_asks_for_the_width_without_shutil() -> None:
    done = _python_s("from sandboxer.cli.main import build_parser\n"
                     "build_parser(['destroy', 'sbx-aaaaaaaaaa'])\n"
                     "print('shutil' in sys.modules)")
    assert done.stdout == "False\n", done.stderr


@pytest.mark.parametrize(("columns", "width"), [("50", 48), ("0", 78), ("x", 78)])
def test_the_help_is_as_wide_as_shutil_would_make_it(
        monkeypatch: pytest.MonkeyPatch, columns: str, width: int) -> None:
    monkeypatch.setenv("COLUMNS", columns)
    monkeypatch.setattr(sys, "__stdout__", None)  # no terminal: 80
    assert main._Formatter("sandboxer")._width == width


def test_a_regular_install_keeps_pips_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(launch, "source_root", lambda: None)
    assert launch.main(["--scripts", str(tmp_path)]) == 0
    assert "pip's command stays" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_this_checkout_is_a_source_root() -> None:
    assert launch.source_root() == ROOT


@pytest.mark.parametrize(("python", "why"), [
    ("python3", "absolute path on one line"),
    ("/usr/bin/python3\n-c", "absolute path on one line"),
    # The kernel would run /tmp/my with the rest as its arguments.
    ("/tmp/my env/bin/python3", "cannot start a #! line"),
    # Cut at the kernel's limit, -S would become - (the program read from stdin).
    ("/" + "d" * 130 + "/python3", "cannot start a #! line"),
])
def test_an_interpreter_path_no_shebang_can_carry_is_refused(
        tmp_path: Path, python: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        launch.install(tmp_path, python, ROOT)
    assert not list(tmp_path.iterdir())


def test_setup_keeps_pips_command_where_the_interpreter_cannot_start_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "executable", "/opt/my python/bin/python3")
    assert launch.main(["--scripts", str(tmp_path)]) == 0
    assert "pip's command stays" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_a_command_whose_checkout_is_gone_says_so(tmp_path: Path) -> None:
    gone = tmp_path / "moved" / "src"
    command = launch.install(tmp_path, sys.executable, gone)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([str(command), "list"], capture_output=True, text=True, timeout=60,
                          check=False, env=env)
    assert done.returncode == 1
    assert f"runs the checkout in {gone}, which holds no sand-boxer" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_thin_command_ends_at_once_only_when_nothing_waits(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    ended: list[int] = []
    monkeypatch.setattr("os._exit", ended.append)
    monkeypatch.setattr("atexit._ncallbacks", lambda: 0)
    monkeypatch.setattr(sys, "stdout", None)  # `sandboxer ... >&-`
    launch._exit_now(3)
    assert ended == []  # the usual teardown: no AttributeError, the status kept
    monkeypatch.undo()
    monkeypatch.setattr("os._exit", ended.append)
    monkeypatch.setattr("atexit._ncallbacks", lambda: 0)
    hold = threading.Event()
    worker = threading.Thread(target=hold.wait)
    worker.start()
    try:
        launch._exit_now(3)
        assert ended == []  # a thread that is not a daemon still runs
    finally:
        hold.set()
        worker.join()
    launch._exit_now(3)
    assert ended == [3]


@pytest.mark.parametrize(("word", "asks"), [("-h", True), ("--help", True), ("--he", True),
                                            ("--dry-run", True), ("--dry", True),
                                            ("--ttl", False), ("--", False), ("-", False),
                                            ("-qh", True), ("-q", False),
                                            ("profile.local", False)])
def test_create_starts_no_service_early_for_help_or_a_dry_run(word: str, asks: bool) -> None:
    assert early.asks_no_create(word) is asks
