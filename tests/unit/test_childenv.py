"""sandboxer.childenv: long-lived children get an allow-list, never the caller's copy."""

from __future__ import annotations

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
