"""ext.local bounds a sandbox cannot escape: one jail for every session, memory, CPU, pids
and disk of the whole sandbox, the seccomp filter, no nested user namespaces.

Real bubblewrap, the real endpoint and the system ssh; cgroup checks read the host's
cgroup files. Run as root (as CI does): cgroups and workspace images need it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import textwrap
from pathlib import Path

import pytest
from tests.integration.test_local_extension import (  # noqa: F401 - fixtures
    create,
    ext,
    run,
    settings,
    wait_for,
)

from sandboxer.extensions.base import Endpoint, Handle
from sandboxer.extensions.local import LocalExtension, cgroups, disk
from sandboxer.extensions.local.spec import LocalSpec

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="cgroups and workspace images need root"),
]
MiB = 1 << 20


@pytest.fixture(scope="module")
def small(ext: LocalExtension) -> object:  # noqa: F811
    """One sandbox with tight bounds, shared by the tests below."""
    spec = LocalSpec.model_validate({"limits": {
        "memory": "128M", "cpus": 0.5, "processes": 64, "disk": "64M"}})
    h, ep = create(ext, spec)
    yield h, ep
    asyncio.run(ext.destroy(h))


def cgroup_of(h: Handle) -> cgroups.SandboxCgroup:
    hierarchy = cgroups.detect()
    assert hierarchy is not None, "this host offers no memory cgroup to root"
    return hierarchy.sandbox(h.sandbox_id)


# --- item 0: one jail -------------------------------------------------------------------


def test_a_background_server_outlives_its_session(small: tuple[Handle, Endpoint]) -> None:
    _, ep = small
    rc, _ = run(ep, "python3 -m http.server 8123 --bind 127.0.0.1 >/tmp/http.log 2>&1 &"
                    " echo started")
    assert rc == 0
    fetch = ("python3 -c \"import urllib.request as u; "
             "print(u.urlopen('http://127.0.0.1:8123/', timeout=2).status)\"")
    wait_for(lambda: run(ep, fetch, timeout=10) == (0, "200\n"),
             "the next session to reach the server", timeout=20)
    rc, out = run(ep, "ps -eo args")
    assert "http.server 8123" in out
    assert run(ep, "echo one >/tmp/shared; echo two >/dev/shm/shared")[0] == 0
    assert run(ep, "cat /tmp/shared /dev/shm/shared") == (0, "one\ntwo\n")
    run(ep, "pkill -f '[h]ttp.server 8123'")


def test_sessions_share_the_namespaces(small: tuple[Handle, Endpoint]) -> None:
    _, ep = small
    probe = "readlink /proc/self/ns/pid /proc/self/ns/net /proc/self/ns/ipc /proc/self/ns/uts"
    first, second = run(ep, probe), run(ep, probe)
    assert first[0] == 0
    assert first == second
    _, out = run(ep, "cat /proc/1/cmdline | tr '\\0' ' '")
    assert out.split()[0].endswith("bwrap")  # bwrap's own init, which reaps orphans
    # The OOM killer picks what sessions run before the jail's own processes.
    assert run(ep, "cat /proc/self/oom_score_adj /proc/1/oom_score_adj /proc/2/oom_score_adj"
               ) == (0, "500\n0\n0\n")


# --- item 1: memory, CPU, pids, disk ---------------------------------------------------


def test_the_cgroup_carries_the_limits(small: tuple[Handle, Endpoint]) -> None:
    h, ep = small
    cg = cgroup_of(h)
    assert cg.memory_limit() == 128 * MiB
    rc, _ = run(ep, "sleep 30 >/dev/null 2>&1 & echo $!")
    assert rc == 0
    assert len(cg.pids()) >= 3  # bwrap, its init, the holder, this sleep
    if cg.version == 1:
        assert (cg.dirs["cpu"] / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (cg.dirs["pids"] / "pids.max").read_text().strip() == "64"
    else:
        assert (cg.dirs["cpu"] / "cpu.max").read_text().split()[0] == "50000"
        assert (cg.dirs["pids"] / "pids.max").read_text().strip() == "64"
    run(ep, "pkill sleep")  # not the jail's own waiting process: it has a name of its own
    assert run(ep, "echo still") == (0, "still\n")
    assert len(cg.pids()) >= 3


def test_a_killed_jail_comes_back_for_the_next_session(ext: LocalExtension) -> None:  # noqa: F811
    h, ep = create(ext)
    try:
        run(ep, "kill -9 2; echo sent")  # pid 2: the jail's waiting process
        rc, out = run(ep, "echo back; cat /proc/2/cmdline | tr '\\0' ' '")
        assert rc == 0, out
        assert out.startswith("back\n/run/sandboxer-jail infinity")
    finally:
        asyncio.run(ext.destroy(h))


@pytest.mark.parametrize("where", ["/tmp", "/dev/shm", "/run"])
def test_a_full_tmpfs_leaves_the_sandbox_usable(small: tuple[Handle, Endpoint],
                                                where: str) -> None:
    _, ep = small
    rc, out = run(ep, f"head -c 300M /dev/zero > {where}/big; echo rc=$?", timeout=60)
    assert "No space left on device" in out, out
    rc, out = run(ep, f"stat -c %s {where}/big; rm -f {where}/big")
    assert rc == 0, out
    assert int(out.split()[0]) < 128 * MiB


def test_tmpfs_pages_count_against_the_sandbox(small: tuple[Handle, Endpoint]) -> None:
    # 64M in /tmp plus 80M held by a process: each fits alone, not both together.
    h, ep = small
    hold = ("python3 -c \"import time; b = bytearray(80 << 20); b[::4096] = b'x' * len(b[::4096]);"
            " print('held', flush=True); time.sleep(60)\" >/tmp/hold.log 2>&1 &")
    assert run(ep, f"{hold} sleep 2; cat /tmp/hold.log") == (0, "held\n")
    run(ep, "head -c 64M /dev/zero > /tmp/fill; sleep 1", timeout=60)
    _, out = run(ep, "pgrep -f '[b]ytearray' >/dev/null && echo alive; stat -c %s /tmp/fill;"
                      " pkill -f '[b]ytearray'; rm -f /tmp/fill")
    assert not (out.startswith("alive") and int(out.split()[-1]) >= 64 * MiB), out
    cg = cgroup_of(h)
    peak = cg.dirs["memory"] / ("memory.max_usage_in_bytes" if cg.version == 1
                                else "memory.peak")
    if peak.exists():
        assert int(peak.read_text()) <= 128 * MiB


def test_processes_of_all_sessions_share_the_memory(small: tuple[Handle, Endpoint]) -> None:
    h, ep = small
    touch = "b = bytearray(90 << 20); b[::4096] = b'x' * len(b[::4096])"
    hold = f"python3 -c \"import time; {touch}; time.sleep(30)\" >/dev/null 2>&1 &"
    assert run(ep, f"{hold} sleep 2; echo held")[1] == "held\n"
    # A second session's 90M does not fit next to the first one's: one of them is killed.
    second, _ = run(ep, f"python3 -c \"{touch}\"", timeout=60)
    _, out = run(ep, "pgrep -f '[t]ime.sleep(30)' || echo gone")
    assert second != 0 or out == "gone\n", out
    run(ep, "pkill -f '[t]ime.sleep(30)'")
    assert cgroup_of(h).memory_limit() == 128 * MiB


def test_the_workspace_is_bounded_by_limits_disk(small: tuple[Handle, Endpoint]) -> None:
    h, ep = small
    _, out = run(ep, "head -c 100M /dev/zero > /workspace/big; echo rc=$?", timeout=60)
    assert "No space left on device" in out
    _, out = run(ep, "stat -c %s /workspace/big; rm -f /workspace/big")
    assert int(out.split()[0]) < 64 * MiB
    ws = Path(h.data["workspace"])
    assert disk.is_mounted(ws)
    assert ws.stat().st_mode & 0o777 == 0o700  # the image's root is no window for others


def test_a_disk_larger_than_the_host_can_give_is_refused(ext: LocalExtension) -> None:  # noqa: F811
    from sandboxer.errors import NoTarget

    before = set(ext.settings.local_root.glob("sbx-*"))
    with pytest.raises(NoTarget, match="does not fit"):
        create(ext, LocalSpec.model_validate({"limits": {"disk": "900000G"}}))
    assert set(ext.settings.local_root.glob("sbx-*")) == before  # nothing left behind


def test_all_sandboxes_together_stay_below_the_host_memory(small: tuple[Handle, Endpoint]
                                                           ) -> None:
    h, _ = small
    parent = cgroup_of(h).dirs["memory"].parent
    name = "memory.limit_in_bytes" if cgroup_of(h).version == 1 else "memory.max"
    cap = cgroups.host_cap(Path("/proc/meminfo").read_text())
    assert cap is not None
    assert int((parent / name).read_text()) <= cap


def test_only_unix_inet_and_netlink_sockets(small: tuple[Handle, Endpoint]) -> None:
    _, ep = small
    probe = ("import socket\n"
             "for fam in (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6, 16, 40, 38, 17, 4):\n"
             "    try:\n"
             "        socket.socket(fam, socket.SOCK_DGRAM if fam != 38 else 5).close()\n"
             "        print(fam, 'ok')\n"
             "    except OSError as e:\n"
             "        print(fam, e.errno)\n")
    import shlex

    _, out = run(ep, f"python3 -c {shlex.quote(probe)}")
    got = dict(line.split() for line in out.splitlines())
    assert [got[k] for k in ("1", "2", "10", "16")] == ["ok"] * 4, out
    assert [got[k] for k in ("40", "38", "17", "4")] == ["97"] * 4, out  # EAFNOSUPPORT


def test_destroy_removes_cgroup_and_image(ext: LocalExtension) -> None:  # noqa: F811
    h, _ = create(ext, LocalSpec.model_validate({"limits": {"disk": "64M"}}))
    cg = cgroup_of(h)
    ws = Path(h.data["workspace"])
    assert all(d.is_dir() for d in cg.unique_dirs)
    assert disk.is_mounted(ws)
    asyncio.run(ext.destroy(h))
    assert not any(d.exists() for d in cg.unique_dirs)
    assert not disk.is_mounted(ws)
    assert not ws.parent.exists()


# --- item 2: seccomp and nested user namespaces ------------------------------------------

# x86_64 syscall numbers; each must fail inside with the errno given.
DENIED = {
    "keyctl": (250, "EPERM"), "add_key": (248, "EPERM"), "request_key": (249, "EPERM"),
    "bpf": (321, "EPERM"), "perf_event_open": (298, "EPERM"), "userfaultfd": (323, "EPERM"),
    "kexec_load": (246, "EPERM"), "init_module": (175, "EPERM"),
    "finit_module": (313, "EPERM"), "delete_module": (176, "EPERM"),
    "mount": (165, "EPERM"), "umount2": (166, "EPERM"), "pivot_root": (155, "EPERM"),
    "unshare": (272, "EPERM"), "swapon": (167, "EPERM"), "reboot": (169, "EPERM"),
    "fsopen": (430, "EPERM"), "open_tree": (428, "EPERM"),
    "io_uring_setup": (425, "ENOSYS"), "clone3": (435, "ENOSYS"),
    # Denied by the filter; the kernel would refuse them too (no capability anywhere).
    "setns": (308, "EPERM"), "chroot": (161, "EPERM"),
}
PROBE = textwrap.dedent("""
    import ctypes, errno, json, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    out = {}
    for name, (nr, _) in json.loads(sys.argv[1]).items():
        args = [0, 0, 0, 0, 0, 0]
        if name == "clone3":
            args = [0, 0, 0, 0, 0, 0]
        if name == "unshare":
            args[0] = 0x10000000
        if name == "chroot":
            args[0] = ctypes.c_char_p(b"/")
        if name == "setns":
            args[0] = os.open("/proc/self/ns/uts", os.O_RDONLY)
        ctypes.set_errno(0)
        rc = libc.syscall(nr, *args)
        out[name] = "ok" if rc >= 0 else errno.errorcode[ctypes.get_errno()]
    # clone(2) with CLONE_NEWUSER (SIGCHLD in the low byte)
    rc = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)
    out["clone(CLONE_NEWUSER)"] = "ok" if rc >= 0 else errno.errorcode[ctypes.get_errno()]
    print(json.dumps(out))
""")


def test_denied_calls_fail_inside(small: tuple[Handle, Endpoint]) -> None:
    import json
    import shlex

    _, ep = small
    want = {name: err for name, (_, err) in DENIED.items()}
    rc, out = run(ep, f"python3 -c {shlex.quote(PROBE)} {shlex.quote(json.dumps(DENIED))}")
    assert rc == 0, out
    got = json.loads(out)
    assert got.pop("clone(CLONE_NEWUSER)") == "EPERM"
    assert got == want


def test_no_nested_user_namespace_and_no_capabilities(small: tuple[Handle, Endpoint]) -> None:
    _, ep = small
    _, out = run(ep, "unshare -Ur sh -c 'grep CapEff /proc/self/status' 2>&1; echo rc=$?")
    assert "rc=1" in out
    assert "CapEff" not in out
    _, out = run(ep, "touch /dev/x /etc/x /x 2>&1; echo rc=$?")
    assert out.count("Read-only file system") == 3, out
    _, out = run(ep, "grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status")
    fields = dict(line.split(":\t") for line in out.splitlines())
    assert fields == {"CapEff": "0000000000000000", "CapBnd": "0000000000000000",
                      "NoNewPrivs": "1", "Seccomp": "2"}


def test_the_tools_of_a_dev_sandbox_still_work(small: tuple[Handle, Endpoint]) -> None:
    _, ep = small
    script = textwrap.dedent("""\
        set -e
        cd /workspace && rm -rf tools && mkdir tools && cd tools
        git init -q r && cd r
        git -c user.email=a@b -c user.name=a commit -q --allow-empty -m first
        git log --oneline | wc -l
        printf 'int main(void) { return 42; }\\n' > t.c
        cc -o t t.c && { ./t || echo "cc=$?"; }
        python3 -c 'import threading as t, subprocess as s; x = t.Thread(target=print,
        args=("py",)); x.start(); x.join(); print(s.run(["true"]).returncode)'
        sh -c 'echo $((6 * 7))'
    """)
    rc, out = run(ep, script, timeout=60)
    assert rc == 0, out
    assert out.split() == ["1", "cc=42", "py", "0", "42"], out
