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


def argv(spec: LocalSpec | None = None, secret_fds: dict[str, int] | None = None) -> list[str]:
    return jail.holder_argv("sbx-1", Path("/w/sbx-1/workspace"), spec or LocalSpec(),
                            {"/etc/passwd": 5}, seccomp_fd=9, bwrap="/usr/bin/bwrap",
                            layout=LAYOUT, secret_fds=secret_fds)


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
    assert spec.limits.cpus == 2.0
    assert spec.limits.disk_bytes == 10 << 30


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
        {"limits": {"cpus": 0}},
        {"limits": {"disk": "1M"}},
        {"limits": {"memory": "2G\n"}},
        {"limits": {"processes": 1}},
        {"shell": "sh"},
        {"hostname": "bad host"},
        {"hostname": "box\n"},
    ],
)
def test_spec_rejects(spec: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        LocalSpec.model_validate(spec)


def test_argv_isolates_by_default() -> None:
    a = argv()
    assert a[0] == "/usr/bin/bwrap"
    for flag in ("--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
                 "--unshare-net", "--disable-userns", "--die-with-parent", "--new-session"):
        assert flag in a
    # The environment is the child's own (session_env), never bwrap's argv.
    assert "--setenv" not in a
    assert "--clearenv" not in a
    assert pairs(a, "--uid") == ["1000"]
    assert pairs(a, "--gid") == ["1000"]
    assert pairs(a, "--cap-drop") == ["ALL"]
    assert pairs(a, "--seccomp") == ["9"]
    assert pairs(a, "--hostname") == ["sbx-1"]
    assert pairs(a, "--chdir") == ["/workspace"]
    assert pairs(a, "--remount-ro") == ["/dev", "/"]
    assert a[a.index("--bind") + 1:a.index("--bind") + 3] == ["/w/sbx-1/workspace", "/workspace"]
    # The jail's one process besides bwrap's init waits; sessions enter it (holder.py).
    assert a[-3:] == ["--", *jail.HOLDER]


def test_argv_system_is_read_only() -> None:
    a = argv()
    assert pairs(a, "--ro-bind") == ["/usr", "/lib64", "/etc"]
    assert pairs(a, "--symlink") == ["usr/bin", "usr/lib", "/usr/bin/sleep"]
    assert a[a.index("--ro-bind-data") + 1:a.index("--ro-bind-data") + 3] == ["5", "/etc/passwd"]
    # The generated /etc/passwd must come after the /etc bind to overlay it.
    assert a.index("--ro-bind-data") > a.index("/etc")
    for mount in ("--proc", "--dev"):
        assert mount in a


def test_every_tmpfs_is_sized_within_the_memory_limit() -> None:
    a = argv(LocalSpec.model_validate({"limits": {"memory": "512M"}}))
    assert pairs(a, "--tmpfs") == ["/dev/shm", "/tmp", "/run"]
    sizes = [int(x) for x in pairs(a, "--size")]
    assert sizes == [128 << 20, 256 << 20, 32 << 20]
    assert sum(sizes) < 512 << 20  # room left to run `rm` when every tmpfs is full
    # --size applies to the mount right after it.
    for i, word in enumerate(a):
        if word == "--tmpfs":
            assert a[i - 2] == "--size"


def test_argv_network_and_hostname() -> None:
    a = argv(LocalSpec(network=True, hostname="box"))
    assert "--unshare-net" not in a
    assert pairs(a, "--hostname") == ["box"]


def test_session_argv_pty_runs_login_shell_in_the_foreground() -> None:
    assert jail.session_argv(session(pty=True, term="xterm-256color")) == [
        *jail.SPAWNER, "--foreground", "0", "/bin/sh", "-l"]
    assert jail.session_env(session(pty=True, term="xterm-256color"))["TERM"] == "xterm-256color"


def test_session_argv_runs_the_command_or_reads_stdin() -> None:
    assert jail.session_argv(session(command="id -u")) == [*jail.SPAWNER, "0", "/bin/sh",
                                                           "-c", "id -u"]
    assert jail.session_argv(session()) == [*jail.SPAWNER, "0", "/bin/sh"]


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
    a = argv(secret_fds={"/run/secrets/TOKEN": 7})
    assert not any(value in word for word in [*a, *jail.session_argv(s)])
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
    base = {resource.RLIMIT_NPROC: 64, resource.RLIMIT_NOFILE: 256, resource.RLIMIT_CORE: 0}
    assert dict(jail.rlimits(spec, memory_cgroup=True)) == base
    # Without a memory cgroup, the per-process address-space limit stands in.
    assert dict(jail.rlimits(spec, memory_cgroup=False)) == {
        **base, resource.RLIMIT_AS: 512 << 20}


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


def test_seccomp_program_is_classic_bpf() -> None:
    from sandboxer.extensions.local import seccomp

    code = seccomp.program()
    assert code
    assert len(code) % 8 == 0  # struct sock_filter is 8 bytes
    assert seccomp.program() is code  # built once per process


@pytest.mark.parametrize("name", ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LD_FOO",
                                  "GCONV_PATH", "GLIBC_TUNABLES", "LOCPATH"])
def test_loader_variables_are_refused_in_setup_env(name: str) -> None:
    from sandboxer.models.profile import SetupSpec

    with pytest.raises(ValidationError, match="dynamic loader"):
        SetupSpec.model_validate({"env": {name: "/workspace/evil.so"}})
    assert SetupSpec.model_validate({"env": {"LDFLAGS": "-O2", "TMPDIR": "/tmp"}}).env


def test_open_pty_refuses_anything_but_the_multiplexer(tmp_path: Path) -> None:
    planted = tmp_path / "ptmx"
    planted.write_text("not a terminal")
    with pytest.raises(OSError, match="not a pseudo-terminal"):
        jail.open_pty(80, 24, None, ptmx=str(planted))
    link = tmp_path / "link"
    link.symlink_to("/dev/ptmx")
    with pytest.raises(OSError, match="Too many levels"):  # O_NOFOLLOW: a planted link
        jail.open_pty(80, 24, None, ptmx=str(link))
    master, slave = jail.open_pty(80, 24, None, ptmx="/dev/pts/ptmx")
    jail.close_fds([master, slave])
