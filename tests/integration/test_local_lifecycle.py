"""ext.local through the manager and the CLI: leases, failures, concurrency, reconcile."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from sandboxer.client.local import LocalClient
from sandboxer.config import Settings
from sandboxer.errors import ProvisionFailed

from .conftest import SANDBOXER, port_open, raw_state, ssh

pytestmark = pytest.mark.integration


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def test_descriptor_reaches_the_sandbox_with_a_pinned_key(local_home: Settings) -> None:
    client = LocalClient(local_home)
    s = client.create("profile.local", ttl="5m").document()
    reach = s["reachability"]
    done = ssh(reach, "echo $USER:$(id -u):$PWD")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode() == f"{reach['user']}:1000:/workspace\n"
    # A different host key under the same name must be refused (StrictHostKeyChecking=yes).
    bad_known = Path(local_home.home) / "wrong_known_hosts"
    bad_known.write_text(
        f"[127.0.0.1]:{reach['port']} ssh-ed25519 "
        "AAAAC3NzaC1lZDI1NTE5AAAAIGJzZWNvbmRrZXlub3R0aGVyZWFsb25lYWFhYWFhYWFh\n"
    )
    forged = {**reach, "ssh_command": reach["ssh_command"].replace(
        f"UserKnownHostsFile={Path(local_home.keys_dir) / (s['id'] + '.known_hosts')}",
        f"UserKnownHostsFile={bad_known}")}
    refused = ssh(forged, "true")
    assert refused.returncode == 255
    assert b"host key" in refused.stderr.lower() or b"verification" in refused.stderr.lower()


def test_lease_expires_with_no_sandboxer_command_running(local_home: Settings) -> None:
    client = LocalClient(local_home)
    s = client.create("profile.local", ttl="3s").document()
    port = s["reachability"]["port"]
    workspace = Path(raw_state(local_home, s["id"])["handle"]["data"]["workspace"])
    assert workspace.exists()
    # Only the endpoint process is running now; it must enforce the lease by itself.
    wait_for(lambda: raw_state(local_home, s["id"])["state"] == "destroyed", 30,
             "the endpoint to expire the lease")
    assert raw_state(local_home, s["id"])["reason"] == "expired"
    assert not workspace.exists()
    assert not port_open(port)
    conn = sqlite3.connect(local_home.db_path)
    types = [r[0] for r in conn.execute(
        "SELECT type FROM events WHERE sandbox_id = ? ORDER BY seq", (s["id"],))]
    assert types == ["sandbox.created", "sandbox.ready", "sandbox.expired",
                     "sandbox.destroyed"]


def test_failed_create_leaves_nothing_behind(local_home: Settings) -> None:
    profiles = Path(os.environ["SANDBOXER_PROFILES"])
    (profiles / "failing.yaml").write_text(
        "id: profile.failing\nextends: profile.local\n"
        "setup: {instructions: ['echo step one', 'echo broken >&2; exit 9']}\n"
    )
    client = LocalClient(local_home)
    with pytest.raises(ProvisionFailed, match=r"setup step 2 of 2 exited 9: broken"):
        client.create("profile.failing")
    (failed,) = client.list_documents(all=True)
    assert failed["state"] == "failed"
    assert "exited 9" in failed["error"]
    handle = raw_state(local_home, failed["id"])["handle"]
    assert handle is not None
    assert not Path(handle["data"]["workspace"]).exists()
    assert not port_open(handle["data"]["port"])
    assert not list(local_home.keys_dir.glob(f"{failed['id']}*"))
    if os.geteuid() == 0:
        uid = handle["data"]["host_uid"]
        owners = [p for p in Path("/proc").iterdir() if p.name.isdigit()
                  and _uid_of(p) == uid]
        assert owners == []


def _uid_of(proc: Path) -> int | None:
    """The real uid of a live process (zombies awaiting init's reaping don't count)."""
    try:
        lines = (proc / "status").read_text().splitlines()
    except OSError:
        return None
    if any(line.startswith("State:") and line.split()[1] == "Z" for line in lines):
        return None
    for line in lines:
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return None


def test_eight_concurrent_creates_from_separate_processes(local_home: Settings) -> None:
    env = {**os.environ}
    procs = [subprocess.Popen([SANDBOXER, "create", "profile.local", "--ttl", "5m", "--json",
                               "--quiet"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(8)]
    docs = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err.decode()
        docs.append(json.loads(out))
    ports = {d["reachability"]["port"] for d in docs}
    assert len(ports) == 8
    assert len({d["id"] for d in docs}) == 8
    for d in docs:
        done = ssh(d["reachability"], "hostname")
        assert done.returncode == 0, done.stderr
        assert done.stdout.decode().strip() == d["id"]
    pidfile = local_home.run_dir / "local-endpoint.pid"
    assert pidfile.exists()  # one shared endpoint serves all eight
    destroy = subprocess.run([SANDBOXER, "destroy", *[d["id"] for d in docs], "--json"],
                             env=env, capture_output=True, timeout=120, check=False)
    assert destroy.returncode == 0, destroy.stderr
    assert {i["state"] for i in json.loads(destroy.stdout)["items"]} == {"destroyed"}
    assert not any(port_open(p) for p in ports)


def test_reconcile_reaps_what_no_live_sandbox_claims(local_home: Settings) -> None:
    client = LocalClient(local_home)
    keep = client.create("profile.local").document()
    lost = client.create("profile.local").document()
    # Simulate a control plane that lost track of `lost` (crash between steps).
    conn = sqlite3.connect(local_home.db_path)
    conn.execute("UPDATE sandboxes SET state = 'destroyed' WHERE id = ?", (lost["id"],))
    conn.commit()
    conn.close()
    removed = client.reconcile()
    assert [r["sandbox_id"] for r in removed] == [lost["id"]]
    assert ssh(lost["reachability"], "true").returncode == 255
    assert ssh(keep["reachability"], "true").returncode == 0


def test_endpoint_exits_when_its_home_disappears(local_home: Settings) -> None:
    client = LocalClient(local_home)
    client.create("profile.local", ttl="5m")
    pidfile = local_home.run_dir / "local-endpoint.pid"
    pid = int(pidfile.read_text())
    (local_home.run_dir / "local-endpoint.sock").unlink()  # as when the home is deleted
    wait_for(lambda: not Path(f"/proc/{pid}").exists()
             or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], 30,
             "the orphaned endpoint to exit")


def _kill_endpoint(settings: Settings) -> int:
    import signal

    pid = int((settings.run_dir / "local-endpoint.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{pid}").exists()
             or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], 10,
             "the endpoint to die")
    return pid


@pytest.mark.parametrize("command", ["get", "list", "ssh", "reachability", "reconcile"])
def test_a_killed_endpoint_comes_back_with_every_sandbox(local_home: Settings,
                                                         command: str) -> None:
    env = {**os.environ, "SANDBOXER_HOME": str(local_home.home)}
    client = LocalClient(local_home)
    first, second = client.create("profile.local", ttl="5m"), client.create("profile.local")
    ports = {s.id: s.reachability.port for s in (first, second)}  # type: ignore[union-attr]
    old = _kill_endpoint(local_home)
    # Every jail and listener goes with it (its last threads may take a moment).
    wait_for(lambda: not any(port_open(p) for p in ports.values()), 10, "the ports to close")
    argv = {"get": ["get", first.id], "list": ["list"], "ssh": ["ssh", first.id, "--", "true"],
            "reachability": ["reachability", "show", first.id], "reconcile": ["reconcile"]}
    done = subprocess.run([SANDBOXER, *argv[command], "--json"], capture_output=True,
                          env=env, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert int((local_home.run_dir / "local-endpoint.pid").read_text()) != old
    for sid, port in ports.items():  # both sandboxes, on their ports, with their keys
        doc = LocalClient(local_home).get_document(sid)
        assert doc["state"] == "ready"
        assert doc["reachability"]["port"] == port
        assert ssh(doc["reachability"], "echo served").stdout == b"served\n"


def test_a_taken_port_gives_a_new_port_and_descriptor(local_home: Settings) -> None:
    import socket

    env = {**os.environ, "SANDBOXER_HOME": str(local_home.home)}
    client = LocalClient(local_home)
    box = client.create("profile.local", ttl="5m")
    old_port = box.reachability.port  # type: ignore[union-attr]
    _kill_endpoint(local_home)
    wait_for(lambda: not port_open(old_port), 10, "the old port to close")
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", old_port))
    squatter.listen()
    try:
        done = subprocess.run([SANDBOXER, "get", box.id, "--json"], capture_output=True,
                              env=env, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["state"] == "ready"
        new_port = doc["reachability"]["port"]
        assert new_port != old_port
        assert f"[127.0.0.1]:{new_port} " in doc["reachability"]["known_hosts"]
        assert ssh(doc["reachability"], "echo moved").stdout == b"moved\n"
        kinds = [e.type for e in client.events(sandbox_id=box.id)]
        assert kinds.count("sandbox.ready") == 2  # the new descriptor reached the outbox
    finally:
        squatter.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the shared local root is for root homes")
def test_the_per_home_dir_goes_with_the_last_sandbox(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # like /root: jail uids cannot pass, so workspaces move
    monkeypatch.setenv("SANDBOXER_HOME", str(private / "home"))
    monkeypatch.delenv("SANDBOXER_LOCAL_ROOT", raising=False)
    settings = Settings.from_env()
    assert settings.local_root.parent == Path("/var/lib/sandboxer/local")
    client = LocalClient(settings)
    a, b = client.create("profile.local"), client.create("profile.local")
    client.destroy(a.id)
    assert settings.local_root.is_dir()  # b still lives there
    client.destroy(b.id)
    # What is left is the keeper's spare images (extensions/local/spares.py): they go, and
    # the dir with them, when it ends.
    left = sorted(p.name for p in settings.local_root.iterdir()) \
        if settings.local_root.exists() else []
    assert left in ([], [".spares"])
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(settings.run_dir / "service.sock"))
        s.sendall(b'{"v": 1, "op": "ping"}\n')
        keeper = json.loads(s.makefile().readline())["result"]["pid"]
    os.kill(keeper, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while Path(f"/proc/{keeper}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not settings.local_root.exists()


def test_concurrent_creates_never_exceed_capacity(local_home: Settings) -> None:
    """Six creates started at once on a target with room for one: all six pass plan()'s
    early check, but the slot is taken with the insert, so one wins and five exit 6 with
    nothing created (issue 12, item 3)."""
    env = {**os.environ, "SANDBOXER_LOCAL_CAPACITY": "1"}
    procs = [subprocess.Popen([SANDBOXER, "create", "profile.local", "--ttl", "5m", "--json",
                               "--quiet"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE) for _ in range(6)]
    results = [(p, *p.communicate(timeout=180)) for p in procs]
    won = [json.loads(out) for p, out, _ in results if p.returncode == 0]
    lost = [err.decode() for p, _, err in results if p.returncode == 6]
    assert len(won) == 1, [(p.returncode, err.decode()) for p, _, err in results]
    assert len(lost) == 5, [(p.returncode, err.decode()) for p, _, err in results]
    assert all("full (1/1" in err for err in lost), lost
    client = LocalClient(local_home)
    assert [d["id"] for d in client.list_documents()] == [won[0]["id"]]
    dirs = [p.name for p in local_home.local_root.iterdir() if p.name.startswith("sbx-")]
    assert dirs == [won[0]["id"]]
    assert ssh(won[0]["reachability"], "true").returncode == 0
