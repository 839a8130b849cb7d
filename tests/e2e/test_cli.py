"""End to end: the installed CLI against real bubblewrap and the system OpenSSH client."""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

Cli = Any  # the `cli` fixture from conftest.py

pytestmark = pytest.mark.e2e


def test_create_ssh_extend_destroy(cli: Cli) -> None:
    created = cli("create", "profile.local", "--ttl", "10m", "--label", "run=e2e", "--json")
    assert created.code == 0, created.err
    doc = created.json()
    assert doc["schema"] == "sandboxer.sandbox/v1"
    assert doc["state"] == "ready"
    assert doc["labels"] == {"tier": "local", "run": "e2e"}
    sid = doc["id"]
    assert "provisioning" in created.err  # progress went to stderr

    reach = cli("reachability", "show", sid, "--json").json()
    assert reach["schema"] == "sandboxer.reachability/v1"
    assert reach["host"] == "127.0.0.1"
    # The descriptor's one-liner works as printed, with the host key pinned.
    argv = [*shlex.split(reach["ssh_command"]), "-o", "BatchMode=yes", "--", "echo", "hi"]
    done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"hi\n"

    ran = cli("ssh", sid, "--json", "--", "id -u; exit 3")
    assert ran.code == 3
    assert ran.json()["stdout"] == "1000\n"

    got = cli("get", sid, "--json").json()
    assert got == doc
    listed = cli("list", "--label", "run=e2e", "--json").json()
    assert [i["id"] for i in listed["items"]] == [sid]
    human = cli("list")
    assert sid in human.out
    assert "ID" in human.out.splitlines()[0]

    extended = cli("extend", sid, "--ttl", "2h", "--json").json()
    assert extended["expires_at"] > doc["expires_at"]
    too_far = cli("extend", sid, "--ttl", "30d")
    assert too_far.code == 4
    assert "ttl.max" in too_far.err

    gone = cli("destroy", sid, "--json")
    assert gone.code == 0
    assert gone.json()["items"][0]["state"] == "destroyed"
    again = cli("destroy", sid, "--json")
    assert again.code == 0
    assert cli("list", "--json").json()["items"] == []
    assert [i["id"] for i in cli("list", "--all", "--json").json()["items"]] == [sid]
    types = [e["type"] for e in cli("events", "--sandbox", sid, "--json").json()["items"]]
    assert types == ["sandbox.created", "sandbox.ready", "sandbox.extended",
                     "sandbox.destroyed"]
    done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    assert done.returncode == 255  # the endpoint is gone


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["create", "profile.nope"], 3, "unknown profile 'profile.nope'"),
        (["get", "sbx-aaaaaaaaaa"], 3, "no sandbox with id"),
        (["destroy", "sbx-aaaaaaaaaa"], 3, "no sandbox with id"),
        (["create", "profile.local", "--ttl", "soon"], 4, "expected a duration"),
        (["create", "profile.local", "--ttl", "30d"], 4, "exceeds profile.local's ttl.max"),
        (["create", "profile.local", "--label", "x=a;rm -rf /"], 4, "label value"),
        (["create", "profile.local", "--label", "novalue"], 4, "expected key=value"),
        (["create"], 2, "usage"),
        (["frobnicate"], 2, "invalid choice"),
        (["create", "profile.local", "--actor", "../root"], 4, "actor '../root'"),
        (["create", "profile.local", "--actor", "a" * 65], 4, "actor"),
        (["create", "profile.local", "--actor", "agt\x1b[2J"], 4, "actor"),
        (["create", "profile.local", "--name", "x\x1b]0;pwned\x07"], 4, "name"),
        (["create", "profile.local", "--name", "two\nlines"], 4, "name"),
        (["create", "profile.local", "--name", "n" * 129], 4, "name"),
        (["events", "--limit", "999999999999999999999"], 2, "whole number from 1 to 10000"),
        (["events", "--limit", "-1"], 2, "whole number from 1 to 10000"),
        (["events", "--limit", "0"], 2, "whole number from 1 to 10000"),
        (["events", "--after", "-5"], 2, "whole number from 0"),
    ],
)
def test_bad_input_exit_codes(cli: Cli, args: list[str], code: int, needle: str) -> None:
    res = cli(*args)
    assert res.code == code, res.err
    assert needle in res.err
    assert "Traceback" not in res.err
    if code != 2:
        err = cli(*args, "--json")
        assert err.json()["schema"] == "sandboxer.error/v1"
        assert err.json()["exit_code"] == code
    assert cli("list", "--all", "--json").json()["items"] == []  # nothing was stored


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("SANDBOXER_LOCAL_CAPACITY", "abc", "expected a whole number"),
        ("SANDBOXER_LOCAL_IDLE_EXIT", "abc", "expected a number of seconds"),
        ("SANDBOXER_COMPOSE_LOCAL_CAPACITY", "-3", "expected a whole number"),
        ("SANDBOXER_EVENTS_RETENTION", "forever", "expected a duration"),
        ("SANDBOXER_URL", "localhost:8765", "expected an http:// or https:// URL"),
        ("SANDBOXER_HOME", "FILE", "is not a directory"),
        ("SANDBOXER_HOME", "DOLLAR", "contains '${'"),
    ],
)
def test_bad_settings_name_their_variable(cli: Cli, cli_env: dict[str, str], tmp_path: Path,
                                          name: str, value: str, needle: str) -> None:
    """Exit 4 at once naming the variable: no bare ValueError, no 15 s wait for an endpoint
    that cannot start, no FileExistsError."""
    if value == "FILE":
        value = str(tmp_path / "a-file")
        Path(value).write_text("")
    elif value == "DOLLAR":
        value = str(tmp_path / "${HOME}")
    started = time.monotonic()
    res = cli("create", "profile.local", "--json", env={**cli_env, name: value})
    assert res.code == 4, res.err
    assert f"{name}=" in res.err
    assert needle in res.err
    assert res.json()["code"] == "invalid_input"
    assert time.monotonic() - started < 10


def test_non_utf8_label_is_refused(cli: Cli) -> None:
    res = cli("create", "profile.local", "--label", b"x=caf\xe9")
    assert res.code == 4
    assert "\\udce9" in res.err or "\\xe9" in res.err


def test_profile_errors(cli: Cli, tmp_path: Path, cli_env: dict[str, str]) -> None:
    a = tmp_path / "a.yaml"
    a.write_text("id: profile.a\nextends: profile.b\nextension: ext.local\n")
    b = tmp_path / "b.yaml"
    b.write_text("id: profile.b\nextends: profile.a\n")
    res = cli("profiles", "validate", str(a), str(b), "--json")
    assert res.code == 4
    results = res.json()["results"]
    assert not results[1]["ok"]
    assert "cycle" in results[1]["error"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: profile.bad\nextension: ext.local\nttl: {default: 1h, maximum: 2h}\n")
    res = cli("profiles", "validate", str(bad))
    assert res.code == 4
    assert f"{bad}: ttl.maximum: unknown key" in res.out
    good = tmp_path / "good.yaml"
    good.write_text("id: profile.good\nextends: profile.local\nttl: {default: 5m}\n")
    assert cli("profiles", "validate", str(good)).code == 0
    env = {**cli_env, "SANDBOXER_PROFILES": str(tmp_path)}
    res = cli("create", "profile.a", env=env)
    assert res.code == 4
    assert "cycle" in res.err


def test_missing_bubblewrap_means_no_target(cli: Cli, cli_env: dict[str, str]) -> None:
    env = {**cli_env, "PATH": str(Path(sys.executable).parent)}  # python, but no bwrap
    res = cli("create", "profile.local", env=env)
    assert res.code == 6, res.err
    assert "bubblewrap" in res.err
    doctor = cli("doctor", "--json", env=env)
    assert doctor.code == 1
    checks = {c["name"]: c for c in doctor.json()["checks"]}
    assert checks["bubblewrap"]["ok"] is False
    assert "apt-get install bubblewrap" in checks["bubblewrap"]["fix"]


@pytest.mark.parametrize(
    ("argv", "pydantic_allowed"),
    [(["list", "--json"], False), (["get", "sbx-aaaaaaaaaa", "--json"], False),
     (["profiles", "list", "--json"], True)],
)
def test_read_only_commands_stay_light(
    cli_env: dict[str, str], argv: list[str], pydantic_allowed: bool
) -> None:
    code = (
        "import sys\n"
        "from sandboxer.cli.main import main\n"
        f"main({argv!r})\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('asyncssh', 'fastapi', 'uvicorn', 'httpx', 'hvac', 'docker')]\n"
        "assert not bad, bad\n"
        f"assert {pydantic_allowed} or 'pydantic' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env=cli_env, capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()


def test_a_new_extension_is_one_package_and_one_entry_point(
    cli: Cli, cli_env: dict[str, str], tmp_path: Path
) -> None:
    fixtures = Path(__file__).parents[1] / "fixtures" / "fake_ext"
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "fake.yaml").write_text("id: profile.fake\nextension: ext.fake\n")
    env = {**cli_env, "PYTHONPATH": str(fixtures), "SANDBOXER_PROFILES": str(profiles)}
    listed = cli("profiles", "list", "--json", env=env).json()
    assert {"id": "profile.fake", "extension": "ext.fake"}.items() <= {
        k: v for i in listed["items"] if i["id"] == "profile.fake" for k, v in i.items()
    }.items()
    created = cli("create", "profile.fake", "--json", env=env)
    assert created.code == 0, created.err
    sid = created.json()["id"]
    assert created.json()["extension"] == "ext.fake"
    assert cli("destroy", sid, "--json", env=env).json()["items"][0]["state"] == "destroyed"


def test_a_home_with_a_space_and_a_percent_sign_works(cli: Cli, cli_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    """OpenSSH splits -o values on whitespace and expands %-tokens in key paths: the
    readiness probe quotes both, so such a home creates, reaches and destroys sandboxes."""
    env = {**cli_env, "SANDBOXER_HOME": str(tmp_path / "my home 100%a")}
    created = cli("create", "profile.local", "--json", env=env, timeout=90)
    assert created.code == 0, created.err
    sid = created.json()["id"]
    try:
        ran = cli("ssh", sid, "--json", "--", "echo", "hi", env=env)
        assert ran.code == 0, ran.err
        assert ran.json()["stdout"].strip() == "hi"
    finally:
        assert cli("destroy", sid, env=env).code == 0
