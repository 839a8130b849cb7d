"""ext.local: spec parsing and the bwrap argv builder (no bwrap needed)."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest
from pydantic import ValidationError

from sandboxer.extensions.local import jail
from sandboxer.extensions.local.spec import LocalSpec, parse_size

LAYOUT = [("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", None)]


def session(**kw: object) -> jail.Session:
    base: dict[str, object] = {
        "sandbox_id": "sbx-1", "user": "dev", "workspace": Path("/w/sbx-1/workspace"),
        "spec": LocalSpec(),
    }
    base.update(kw)
    return jail.Session(**base)  # type: ignore[arg-type]


def argv(**kw: object) -> list[str]:
    return jail.build_argv(session(**kw), {"/etc/passwd": 5}, bwrap="/usr/bin/bwrap",
                           layout=LAYOUT)


def pairs(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == flag]


def test_spec_defaults() -> None:
    spec = LocalSpec.model_validate({})
    assert spec.network is False
    assert spec.shell == "/bin/sh"
    assert spec.hostname is None
    assert spec.limits.processes == 256
    assert spec.limits.open_files == 1024
    assert spec.limits.memory_bytes == 2 << 30


@pytest.mark.parametrize(
    ("text", "size"),
    [("512M", 512 << 20), ("2G", 2 << 30), ("1g", 1 << 30), ("4096K", 4 << 20), ("3GiB", 3 << 30)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    "spec",
    [
        {"bogus": 1},
        {"limits": {"memory": "lots"}},
        {"limits": {"memory": "1M"}},
        {"limits": {"cpus": 2}},
        {"limits": {"processes": 1}},
        {"shell": "sh"},
        {"hostname": "bad host"},
    ],
)
def test_spec_rejects(spec: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        LocalSpec.model_validate(spec)


def test_argv_isolates_by_default() -> None:
    a = argv(command="id -u")
    assert a[:2] == ["/usr/bin/bwrap", "--unshare-all"]
    assert "--share-net" not in a
    for flag in ("--die-with-parent", "--new-session"):
        assert flag in a
    # The environment is the child's own (session_env), never bwrap's argv.
    assert "--setenv" not in a
    assert "--clearenv" not in a
    assert pairs(a, "--uid") == ["1000"]
    assert pairs(a, "--gid") == ["1000"]
    assert pairs(a, "--cap-drop") == ["ALL"]
    assert pairs(a, "--hostname") == ["sbx-1"]
    assert pairs(a, "--chdir") == ["/workspace"]
    assert a[a.index("--bind") + 1:a.index("--bind") + 3] == ["/w/sbx-1/workspace", "/workspace"]
    assert a[-4:] == ["--", "/bin/sh", "-c", "id -u"]


def test_argv_system_is_read_only() -> None:
    a = argv()
    assert pairs(a, "--ro-bind") == ["/usr", "/lib64", "/etc"]
    assert pairs(a, "--symlink") == ["usr/bin", "usr/lib"]
    assert a[a.index("--ro-bind-data") + 1:a.index("--ro-bind-data") + 3] == ["5", "/etc/passwd"]
    # The generated /etc/passwd must come after the /etc bind to overlay it.
    assert a.index("--ro-bind-data") > a.index("/etc")
    for mount in ("--proc", "--dev"):
        assert mount in a
    assert pairs(a, "--tmpfs") == ["/tmp", "/run"]


def test_argv_network_and_hostname() -> None:
    a = argv(spec=LocalSpec(network=True, hostname="box"))
    assert "--share-net" in a
    assert pairs(a, "--hostname") == ["box"]


def test_argv_pty_keeps_session_and_runs_login_shell() -> None:
    a = argv(pty=True, term="xterm-256color")
    assert "--new-session" not in a
    assert a[-3:] == ["--", "/bin/sh", "-l"]
    assert jail.session_env(session(pty=True, term="xterm-256color"))["TERM"] == "xterm-256color"


def test_argv_shell_without_command_reads_stdin() -> None:
    assert argv()[-2:] == ["--", "/bin/sh"]


def test_env_is_clean_and_reserved_names_win() -> None:
    env = jail.jail_env(session(env={"FOO": "1", "HOME": "/evil", "SANDBOXER_ID": "x"}))
    assert env == {
        "FOO": "1", "PATH": jail.JAIL_PATH, "HOME": "/workspace", "USER": "dev",
        "LOGNAME": "dev", "SHELL": "/bin/sh", "SANDBOXER_ID": "sbx-1",
    }


def test_secrets_are_in_the_environment_and_files_never_in_argv() -> None:
    value = "canary-3f1c9e"
    s = session(env={"FOO": "1"}, secrets={"TOKEN": value, "HOME": "/evil"}, command="true")
    env = jail.session_env(s)
    assert env["TOKEN"] == value
    assert env["FOO"] == "1"
    assert env["HOME"] == "/workspace"  # a reserved name never comes from a secret
    assert value not in repr(s)
    files = jail.secret_files({"TOKEN": value})
    assert files == {"/run/secrets/TOKEN": value.encode()}
    a = jail.build_argv(s, {"/etc/passwd": 5}, bwrap="bwrap", layout=LAYOUT,
                        secret_fds={"/run/secrets/TOKEN": 7})
    assert not any(value in word for word in a)
    i = a.index("/run/secrets/TOKEN")
    assert a[i - 4:i + 1] == ["--perms", "0400", "--ro-bind-data", "7", "/run/secrets/TOKEN"]
    # /run/secrets is made inside the /run tmpfs, after it is mounted.
    assert a.index("/run/secrets") > a.index("/run")
    assert pairs(a, "--dir") == ["/run/secrets"]


def test_no_secrets_no_secrets_dir() -> None:
    assert "/run/secrets" not in argv()


def test_etc_files_resolve_the_user() -> None:
    files = jail.etc_files("dev", "sbx-1", "/bin/bash")
    assert b"dev:x:1000:1000:dev:/workspace:/bin/bash\n" in files["/etc/passwd"]
    assert b"dev:x:1000:\n" in files["/etc/group"]
    assert files["/etc/hostname"] == b"sbx-1\n"


def test_rlimits_follow_the_spec() -> None:
    spec = LocalSpec.model_validate({"limits": {"processes": 64, "memory": "512M",
                                                "open_files": 256}})
    assert dict(jail.rlimits(spec)) == {
        resource.RLIMIT_NPROC: 64, resource.RLIMIT_AS: 512 << 20, resource.RLIMIT_NOFILE: 256,
    }


def test_host_layout(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "bin").symlink_to("usr/bin")
    (tmp_path / "lib64").mkdir()
    assert jail.host_layout(tmp_path) == [("bin", "usr/bin"), ("lib64", None)]


def test_data_pipes_carry_content() -> None:
    import os

    fds = jail.data_pipes({"/etc/hostname": b"box\n"})
    try:
        assert os.read(fds["/etc/hostname"], 100) == b"box\n"
    finally:
        jail.close_fds(fds.values())


def test_checked_secrets() -> None:
    assert jail.checked_secrets(None) == {}
    assert jail.checked_secrets({"TOKEN": "v"}) == {"TOKEN": "v"}
    for bad in ({"HOME": "v"}, {"not-ident": "v"}, {"A": 1}, {"A": "a\0b"}, ["A"]):
        with pytest.raises(ValueError, match="secret"):
            jail.checked_secrets(bad)
