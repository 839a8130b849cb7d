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
        "PYTHONPATH": "/elsewhere",
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
