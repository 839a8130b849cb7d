"""sandboxer.childenv: long-lived children get an allow-list, never the caller's copy."""

from __future__ import annotations

from pathlib import Path

from sandboxer import childenv


def test_only_system_names_and_asked_settings_pass() -> None:
    env = {
        "PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC",
        "TMPDIR": "/tmp", "SANDBOXER_LOCAL_ROOT": "/srv/l", "SANDBOXER_PROFILES": "/p",
        "SANDBOXER_TOKEN": "t", "SANDBOXER_URL": "http://x", "BAO_TOKEN": "b",
        "AWS_SECRET_ACCESS_KEY": "a", "MY_CANARY": "c", "LD_PRELOAD": "/evil.so",
        "SANDBOXER_LOCAL_API_TOKEN": "t2", "SANDBOXER_LOCAL_SIGNING_KEY": "k",
        "PYTHONPATH": "/elsewhere", "LC_MYTOKEN": "smuggled by SendEnv LC_*",
    }
    got = childenv.allowed(env, names=("SANDBOXER_PROFILES",), prefixes=("SANDBOXER_LOCAL_",))
    assert got == {
        "PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC",
        "TMPDIR": "/tmp", "SANDBOXER_LOCAL_ROOT": "/srv/l", "SANDBOXER_PROFILES": "/p",
    }


def test_a_build_tool_never_sees_credentials_or_the_database_url() -> None:
    env = {"PATH": "/usr/bin", "HOME": "/root", "SANDBOXER_DATABASE_URL":
           "postgresql://u:pw@db/x", "SANDBOXER_STATE_HUB_TOKEN": "hub-token",
           "SANDBOXER_STATE_HUB_URL": "https://u:p@hub", "SANDBOXER_TOKEN": "t",
           "SANDBOXER_URL": "https://plane", "BAO_TOKEN": "bao", "AWS_SECRET_ACCESS_KEY": "a",
           "SANDBOXER_DEBIAN_MIRROR": "http://deb", "PACKER_LOG": "1",
           "PACKER_GITHUB_API_TOKEN": "gh", "https_proxy": "http://proxy:3128",
           "DOCKER_HOST": "unix:///d.sock"}
    got = childenv.for_tool(env, prefixes=("PACKER_",))
    assert got == {"PATH": "/usr/bin", "HOME": "/root",
                   "SANDBOXER_DEBIAN_MIRROR": "http://deb", "PACKER_LOG": "1",
                   "https_proxy": "http://proxy:3128", "DOCKER_HOST": "unix:///d.sock"}


def test_piped_settings_leave_the_environment_and_come_back_only_by_name() -> None:
    import io

    caller = {"PATH": "/bin", "SANDBOXER_DATABASE_URL": "postgresql://u:pw@h/db",
              "SANDBOXER_PROFILES": "/p"}
    env = childenv.for_sandboxer(caller, Path("/h"))
    assert "SANDBOXER_DATABASE_URL" not in env
    assert env["SANDBOXER_PROFILES"] == "/p"
    sent = childenv.piped(caller)
    assert childenv.receive_piped(io.BytesIO(sent)) == {
        "SANDBOXER_DATABASE_URL": "postgresql://u:pw@h/db"}
    # Nothing from /dev/null, nothing but PIPED names, nothing from garbage.
    assert childenv.receive_piped(io.BytesIO(b"")) == {}
    assert childenv.receive_piped(io.BytesIO(b'{"PATH": "/evil", "LD_PRELOAD": "x"}')) == {}
    assert childenv.receive_piped(io.BytesIO(b"not json")) == {}


def test_a_keeper_started_early_gets_its_whole_environment_over_the_pipe() -> None:
    """send_environ (the command, once it read its settings) to receive_environ (the
    keeper sandboxer/early.py spawned): for_sandboxer's environment with the PIPED
    settings; nothing when the command closed the pipe without a word, or sent junk."""
    import io
    import os

    caller = {"PATH": "/bin", "SANDBOXER_DATABASE_URL": "postgresql://u:pw@h/db",
              "SANDBOXER_TOKEN": "t", "BAO_TOKEN": "b", "SANDBOXER_PROFILES": "/p"}
    r, w = os.pipe()
    childenv.send_environ(w, caller, Path("/h"))  # it closes w
    with os.fdopen(r, "rb") as stream:
        got = childenv.receive_environ(stream)
    assert got == {**childenv.for_sandboxer(caller, Path("/h")),
                   "SANDBOXER_DATABASE_URL": "postgresql://u:pw@h/db"}
    assert "SANDBOXER_TOKEN" not in got
    assert "BAO_TOKEN" not in got
    for junk in (b"", b"not json", b"[1]", b'{"environ": [1]}',
                 b"{" + b" " * childenv.EARLY_MAX + b"}"):
        assert childenv.receive_environ(io.BytesIO(junk)) is None
    odd = b'{"environ": {"A=B": "x", "": "y", "C": "\\u0000", "D": 1, "E": "ok"}}'
    assert childenv.receive_environ(io.BytesIO(odd)) == {"E": "ok"}


def test_a_handover_the_keeper_cannot_take_gives_up_without_hanging() -> None:
    """Too large for receive_environ, or not read in time (a keeper stuck in its start):
    False, the pipe closed with nothing whole on it, and the caller starts a keeper
    otherwise."""
    import os
    import time

    big = {"PATH": "/bin", "SANDBOXER_BIG": "x" * (256 << 10)}  # past the pipe's buffer
    r, w = os.pipe()
    t = time.monotonic()
    assert childenv.send_environ(w, big, Path("/h"), timeout=0.2) is False
    assert time.monotonic() - t < 5
    with os.fdopen(r, "rb") as stream:
        assert childenv.receive_environ(stream) is None  # cut off: refused
    r, w = os.pipe()
    huge = {"PATH": "/bin", "SANDBOXER_BIG": "\x01" * (childenv.EARLY_MAX // 5)}
    assert childenv.send_environ(w, huge, Path("/h")) is False
    with os.fdopen(r, "rb") as stream:
        assert stream.read() == b""
