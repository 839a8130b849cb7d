"""Every command through SANDBOXER_URL + SANDBOXER_TOKEN: the installed CLI on an
"operator's machine" (its own empty SANDBOXER_HOME) against a real `sandboxer serve` over
the test-only ext.fake, ext.compose-ssh and ext.vm-packer (a real Packer build).

What is checked is the server's state — its home, its profiles, its tokens, its files —
and that the operator's home never gets a store of its own.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api_support import StateHub, wait_for
from tests.e2e.conftest import SANDBOXER, Result
from tests.integration.api.conftest import Serve, serve_env
from tests.support_env import KEEP_ENV

# A Packer template whose builder needs no VM: the shell-local step writes what an image
# entry holds (a disk and the kernel and initrd next to it), so `packer build` really runs
# in well under a second.
NULL_TEMPLATE = {
    "variables": {"output_dir": "", "accelerator": "", "flavour": "plain"},
    "builders": [{"type": "null", "communicator": "none"}],
    "provisioners": [{"type": "shell-local", "inline": [
        "mkdir -p {{user `output_dir`}}",
        "echo {{user `flavour`}} > {{user `output_dir`}}/disk.qcow2",
        "echo kernel > {{user `output_dir`}}/vmlinuz",
        "echo initrd > {{user `output_dir`}}/initrd.img"]}],
}


@dataclass
class Plane:
    """A server (its home and Packer directory) and an operator's machine."""

    server: Serve
    home: Path
    packer: Path
    env: dict[str, str]  # the operator's: SANDBOXER_URL, an admin token, a home of its own
    alice: str  # a non-admin token

    def run(self, *args: str, token: str | None = None, timeout: float = 120) -> Result:
        env = dict(self.env)
        if token is not None:
            env["SANDBOXER_TOKEN"] = token
        assert SANDBOXER is not None
        done = subprocess.run([SANDBOXER, *args], capture_output=True, timeout=timeout,
                              env=env, stdin=subprocess.DEVNULL, check=False)
        return Result(done.returncode, done.stdout.decode(errors="replace"),
                      done.stderr.decode(errors="replace"))

    def ok(self, *args: str, token: str | None = None) -> Any:
        res = self.run(*args, "--json", token=token)
        assert res.code == 0, (args, res.out, res.err)
        return res.json()

    def refused(self, *args: str, code: int, error: str) -> dict[str, Any]:
        res = self.run(*args, "--json", token=self.alice)
        assert res.code == code, (args, res.out, res.err)
        doc: dict[str, Any] = res.json()
        assert doc["code"] == error, (args, doc)
        return doc


def _local_token(env: dict[str, str], *args: str) -> str:
    assert SANDBOXER is not None
    done = subprocess.run([SANDBOXER, "tokens", "add", *args, "--json"], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    return str(json.loads(done.stdout)["token"])


@contextmanager
def _plane(tmp_path: Path, **server_env: str) -> Iterator[Plane]:
    if SANDBOXER is None:
        pytest.fail("the sandboxer console script is not installed (pip install -e .)")
    home, packer = tmp_path / "server" / "home", tmp_path / "server" / "packer"
    packer.mkdir(parents=True)
    (packer / "null.json").write_text(json.dumps(NULL_TEMPLATE))
    env = serve_env(home, SANDBOXER_PACKER_DIR=str(packer),
                    HOME=str(tmp_path / "server" / "user"), **server_env)
    admin = _local_token(env, "ops", "--admin")  # the one token made on the server itself
    alice = _local_token(env, "alice")
    server = Serve(env, tmp_path / "serve.log")
    mine = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_") or k in KEEP_ENV}
    mine.update(SANDBOXER_URL=server.url, SANDBOXER_TOKEN=admin,
                SANDBOXER_HOME=str(tmp_path / "operator" / "home"),
                HOME=str(tmp_path / "operator" / "user"),
                # this machine's own settings must not matter: the server's do
                SANDBOXER_STATE_HUB_URL="http://127.0.0.1:9")
    try:
        yield Plane(server, home, packer, mine, alice)
    finally:
        assert server.stop() == 0
    assert not (tmp_path / "operator" / "home" / "state.db").exists()  # nothing local
    log = (tmp_path / "serve.log").read_text()
    assert admin not in log
    assert alice not in log
    assert "sbxt_" not in log  # no token, the ones made over the API included


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Plane]:
    with _plane(tmp_path) as made:
        yield made


def test_sandboxes_profiles_reachability_and_events_are_the_servers(
        plane: Plane, tmp_path: Path) -> None:
    assert "profile.fake" in [p["id"] for p in plane.ok("profiles", "list")["items"]]
    assert plane.ok("profiles", "show", "profile.fake")["extension"] == "ext.fake"
    mine = tmp_path / "child.yaml"  # a file of the operator's machine, uploaded
    mine.write_text("id: profile.child\nextends: profile.fake\n")
    assert plane.ok("profiles", "validate", str(mine))["results"][0]["ok"] is True

    box = plane.ok("create", "profile.fake", "--quiet", token=plane.alice)
    sid = box["id"]
    assert (box["state"], box["actor"]) == ("ready", "alice")
    assert (plane.home / "fake" / sid).is_dir()  # the server's extension made it
    assert plane.ok("get", sid, token=plane.alice)["id"] == sid
    assert [d["id"] for d in plane.ok("list")["items"]] == [sid]
    assert plane.ok("extend", sid, "--ttl", "90m", token=plane.alice)["state"] == "ready"
    assert plane.ok("reachability", "show", sid, token=plane.alice)["port"] == 2222
    config = plane.ok("ssh-config", sid, token=plane.alice)
    assert config["hosts"][0]["sandbox_id"] == sid
    assert config["hosts"][0]["options"]["Port"] == "2222"
    assert sid in plane.ok("ssh-config")["text"]
    types = [e["type"] for e in plane.ok("events", "--sandbox", sid)["items"]]
    assert types == ["sandbox.created", "sandbox.ready", "sandbox.extended"]

    # events --follow: the server's events as JSON lines, until interrupted
    assert SANDBOXER is not None
    with subprocess.Popen([SANDBOXER, "events", "--follow", "--json", "--sandbox", sid],
                          env={**plane.env, "SANDBOXER_TOKEN": plane.alice},
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as follow:
        try:
            assert follow.stdout is not None
            seen = [json.loads(follow.stdout.readline())["type"] for _ in range(3)]
            assert seen == types
            done = plane.ok("destroy", sid, token=plane.alice)
            assert done["items"][0]["state"] == "destroyed"
            ready, _, _ = select.select([follow.stdout], [], [], 30)
            assert ready, "events --follow printed nothing after the destroy"
            assert json.loads(follow.stdout.readline())["type"] == "sandbox.destroyed"
        finally:
            follow.send_signal(signal.SIGINT)
            assert follow.wait(30) == 130
    assert not (plane.home / "fake" / sid).exists()

    gone = plane.run("ssh", sid, "--json", "--", "true", token=plane.alice)
    assert gone.code == 8, gone.err  # the server says: destroyed, so not reachable
    assert "is destroyed" in gone.json()["message"]
    assert plane.ok("reap")["items"] == []
    assert plane.ok("reconcile")["removed"] == []
    plane.refused("reap", code=8, error="forbidden")
    plane.refused("reconcile", code=8, error="forbidden")


def test_tokens_are_managed_on_the_server(plane: Plane) -> None:
    made = plane.ok("tokens", "add", "bob")
    token = made["token"]
    assert token.startswith("sbxt_")
    assert (made["schema"], made["actor"], made["admin"]) == ("sandboxer.token/v1", "bob",
                                                            False)
    plain = plane.run("tokens", "add", "carol", "--admin")  # human output: token on stdout
    assert plain.code == 0
    assert plain.out.strip().startswith("sbxt_")
    assert "shown only now" in plain.err
    assert plain.out.strip() not in plain.err
    listed = plane.ok("tokens", "list")["items"]
    assert {i["actor"] for i in listed} == {"ops", "alice", "bob", "carol"}
    assert all(set(i) == {"id", "actor", "admin", "created_at", "last_used_at"}
               for i in listed)
    assert token not in json.dumps(listed)
    assert plane.ok("list", token=token)["items"] == []  # the new token works
    plane.refused("tokens", "add", "mallory", "--admin", code=8, error="forbidden")
    plane.refused("tokens", "list", code=8, error="forbidden")
    plane.refused("tokens", "remove", made["id"], code=8, error="forbidden")
    assert plane.ok("tokens", "remove", made["id"])["actor"] == "bob"
    revoked = plane.run("list", "--json", token=token)
    assert (revoked.code, revoked.json()["code"]) == (8, "unauthenticated")
    missing = plane.run("tokens", "remove", made["id"], "--json")
    assert (missing.code, missing.json()["code"]) == (3, "not_found")
    bad = plane.run("tokens", "add", "not an actor", "--json")
    assert bad.code == 4, bad.out


def test_targets_images_publish_and_doctor_act_on_the_server(plane: Plane,
                                                             tmp_path: Path) -> None:
    names = {t["name"] for t in plane.ok("targets", "list")["items"]}
    assert "fake-1" in names  # the fake is the server's extension only
    added = plane.ok("targets", "add", "far", "fake://far", "--capacity", "2", "--yes")
    assert added["name"] == "far"
    assert "far" in {t["name"] for t in plane.ok("targets", "list", token=plane.alice)["items"]}
    assert plane.ok("targets", "check", "far")["items"][0]["ok"] is True
    plane.refused("targets", "add", "near", "fake://near", "--yes", code=8, error="forbidden")
    plane.refused("targets", "remove", "far", code=8, error="forbidden")
    assert plane.ok("targets", "remove", "far")["name"] == "far"
    assert "far" not in {t["name"] for t in plane.ok("targets", "list")["items"]}

    built = plane.ok("images", "build", "fake-image", "--var", "k=v", "-q")
    assert built["built"] is True
    assert json.loads((plane.home / "fake-images" / "fake-image").read_text())[
        "variables"] == {"k": "v"}
    plane.refused("images", "build", "fake-image", code=8, error="forbidden")

    publish = plane.run("events", "publish", "--json")  # the server has no State Hub
    assert (publish.code, publish.json()["code"]) == (2, "usage"), publish.err
    assert "no State Hub configured" in publish.json()["message"]
    plane.refused("events", "publish", code=8, error="forbidden")

    doctor = plane.run("doctor", "--json")
    checks = {c["name"]: c for c in doctor.json()["checks"]}
    assert checks["fake extension"]["ok"] is True  # the server's extensions
    assert str(plane.home) in checks["state store"]["detail"]
    plane.refused("doctor", code=8, error="forbidden")


def _operator_only(plane: Plane, private: Path, prepare: str, *args: str) -> Result:
    """The CLI in a mount namespace of its own where ``private`` is a tmpfs that
    ``prepare`` (sh, ``$1`` is the directory) fills: files the server cannot see, or —
    over a directory of the server's — cannot be seen, as on another machine."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs unshare and root for a private mount namespace")
    private.mkdir(parents=True, exist_ok=True)
    assert SANDBOXER is not None
    script = 'mount -t tmpfs none "$1" && eval "$2" && shift 2 && exec "$@"'
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                           script, "sh", str(private), prepare, SANDBOXER, *args],
                          env=plane.env, capture_output=True, timeout=120, check=False)
    return Result(done.returncode, done.stdout.decode(errors="replace"),
                  done.stderr.decode(errors="replace"))


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, capture_output=True, timeout=30)


def test_targets_add_reads_the_identity_on_the_servers_machine(plane: Plane,
                                                               tmp_path: Path) -> None:
    # The operator's key is on "another machine": a tmpfs the server's process never sees.
    private = tmp_path / "operator" / "keys"
    done = _operator_only(plane, private, 'ssh-keygen -q -t ed25519 -N "" -f "$1/id"',
                          "targets", "add", "h1", "ssh://u@127.0.0.1:1", "--identity",
                          f"{private}/id", "--yes", "--json")
    assert done.code == 4, done.err
    message = done.json()["message"]
    assert f"--identity {private}/id: no such file" in message
    assert "a file on the server's machine" in message
    assert not any(private.iterdir())  # the tmpfs was the operator's alone

    there = plane.home.parent / "server-key"  # the server's: found, so it goes on to SSH
    _keygen(there)
    res = plane.run("targets", "add", "h1", "ssh://u@127.0.0.1:1", "--identity", str(there),
                    "--yes", "--json")
    assert res.code == 5, res.err  # first contact: nothing listens on port 1
    assert "cannot reach u@127.0.0.1:1 over SSH" in res.json()["message"]
    junk = plane.home.parent / "not-a-key"
    junk.write_text("not a key\n")
    junk.chmod(0o600)
    res = plane.run("targets", "add", "h1", "ssh://u@127.0.0.1:1", "--identity", str(junk),
                    "--yes", "--json")
    assert res.code == 4, res.err
    assert "not a private key SSH can use" in res.json()["message"]
    relative = plane.run("targets", "add", "h1", "ssh://u@127.0.0.1:1", "--identity",
                         "server-key", "--yes")
    assert relative.code == 2
    assert "absolute path on the server's machine" in relative.err
    assert "h1" not in {t["name"] for t in plane.ok("targets", "list")["items"]}


def test_a_packer_template_is_built_by_the_server(plane: Plane, tmp_path: Path) -> None:
    built = plane.ok("images", "build", "null.json", "--var", "flavour=remote", "-q")
    assert (built["built"], built["target"]) == (True, "qemu")
    entry = Path(built["path"])
    assert entry.parent == plane.home / "images"  # the server's image cache
    assert (entry / "disk.qcow2").read_text() == "remote\n"  # the real packer wrote it
    assert built["template"] == str(plane.packer / "null.json")
    # a path (no URL segment) goes in the body; the same template, so the cache answers
    (plane.packer / "sub").mkdir(exist_ok=True)
    (plane.packer / "sub" / "null.json").write_text((plane.packer / "null.json").read_text())
    again = plane.ok("images", "build", "sub/null.json", "--var", "flavour=remote")
    assert (again["built"], again["path"]) == (False, built["path"])
    forced = plane.ok("images", "build", "sub/null.json", "--var",
                      "flavour=remote", "--force", "-q")
    assert forced["built"] is True
    plane.refused("images", "build", "sub/null.json", code=8, error="forbidden")
    # A token names files of the server only inside its Packer directory: no absolute
    # path, no way out with '..' or a symlink (the file exists; the answer is the same).
    (plane.packer / "out").symlink_to(tmp_path)
    (tmp_path / "x.json").write_text((plane.packer / "null.json").read_text())
    for outside in (str(plane.packer / "null.json"), "sub/../null.json", "out/x.json",
                    str(tmp_path / "x.json")):
        res = plane.run("images", "build", outside, "--json")
        assert res.code == 4, (outside, res.err)
        assert "in the server's Packer directory" in res.json()["message"]
    private = tmp_path / "operator" / "templates"  # the operator's file, never uploaded
    res = _operator_only(plane, private, f"echo '{json.dumps(NULL_TEMPLATE)}' > \"$1/mine.json\"",
                         "images", "build", f"{private}/mine.json", "--json")
    assert res.code == 4, res.err
    assert not any(private.iterdir())
    message = res.json()["message"]
    assert "in the server's Packer directory" in message
    assert "is a file of this machine" in message
    unknown = plane.run("images", "build", "null.json", "--var", "colour=red", "--json")
    assert unknown.code == 4
    assert "declares no variable colour" in unknown.json()["message"]


def test_what_cannot_work_remotely_says_so(plane: Plane) -> None:
    res = plane.run("serve", "--port", "0")
    assert res.code == 2
    assert "cannot work through SANDBOXER_URL" in res.err
    assert "serving" not in res.err
    res = plane.run("db", "migrate", "--json")
    assert (res.code, res.json()["code"]) == (2, "usage")
    assert "talks to the database directly" in res.json()["message"]
    assert not (Path(plane.env["SANDBOXER_HOME"]) / "state.db").exists()


def test_ssh_from_another_machine_fetches_the_sandboxs_key(plane: Plane,
                                                           tmp_path: Path) -> None:
    if shutil.which("bwrap") is None:
        pytest.fail("bubblewrap is required for a real ext.local sandbox")
    box = plane.ok("create", "profile.local", "--ttl", "10m", "--quiet", token=plane.alice)
    sid = box["id"]
    mine = Path(plane.env["SANDBOXER_HOME"]) / "keys" / sid
    try:
        # The operator cannot read the server's home (a tmpfs hides it), so the key the
        # descriptor names is not there: ssh fetches it from the server, as the owner.
        res = _operator_only(plane, plane.home, "true", "ssh", sid, "--json", "--",
                             "echo in-$(id -un)")
        assert res.code == 0, (res.out, res.err)
        assert res.json()["stdout"] == f"in-{box['reachability']['user']}\n"
        assert mine.read_bytes() == (plane.home / "keys" / sid).read_bytes()
        assert mine.stat().st_mode & 0o777 == 0o600
        # cp likewise (scp with the fetched key), and the SDK through the files route.
        note = tmp_path / "note.txt"
        note.write_text("remote cp\n")
        res = _operator_only(plane, plane.home, "true", "cp", "--json", str(note),
                             f"{sid}:note.txt")
        assert (res.code, res.json()["exit_status"]) == (0, 0), (res.out, res.err)
        from sandboxer.client.http import HttpClient

        with HttpClient(plane.server.url, plane.alice) as sdk:
            assert sdk.download(sid, "note.txt", tmp_path / "back.txt") == 10
            assert (tmp_path / "back.txt").read_text() == "remote cp\n"
            assert sdk.upload(sid, note, "via-api.txt") == 10
        res = plane.run("ssh", sid, "--json", "--", "cat via-api.txt", token=plane.alice)
        assert res.json()["stdout"] == "remote cp\n"
        config = _operator_only(plane, plane.home, "true", "ssh-config", "--json")
        assert config.json()["hosts"][0]["options"]["IdentityFile"] == str(mine)
        here = plane.ok("ssh-config", sid)  # where the server's file is readable: that one
        assert here["hosts"][0]["options"]["IdentityFile"] == str(plane.home / "keys" / sid)
        headers = {"Authorization": f"Bearer {plane.alice}"}
        got = httpx.get(f"{plane.server.url}/v1/sandboxes/{sid}/identity", headers=headers)
        assert got.status_code == 200
        assert got.headers["cache-control"] == "no-store"
        admin = plane.ok("create", "profile.local", "--ttl", "10m", "--quiet")
        other = httpx.get(f"{plane.server.url}/v1/sandboxes/{admin['id']}/identity",
                          headers=headers)  # not alice's: as if it did not exist
        assert (other.status_code, other.json()["code"]) == (404, "sandbox_not_found")
        plane.ok("destroy", admin["id"])
    finally:
        plane.ok("destroy", sid)
    gone = httpx.get(f"{plane.server.url}/v1/sandboxes/{sid}/identity", headers=headers)
    assert (gone.status_code, gone.json()["code"]) == (409, "conflict")


def test_events_publish_reaches_the_servers_publisher(tmp_path: Path) -> None:
    hub = StateHub().start()
    try:
        with _plane(tmp_path, **hub.env()) as plane:
            sid = plane.ok("create", "profile.fake", "--quiet", token=plane.alice)["id"]
            wait_for(lambda: len(hub.accepted) >= 2)  # the server's publisher delivered

            def delivered() -> bool:
                items = plane.ok("events", "--sandbox", sid)["items"]
                return [e["delivery"] for e in items] == ["delivered", "delivered"]

            wait_for(delivered)
            res = plane.run("events", "publish", "--json")
            # this machine's SANDBOXER_STATE_HUB_URL (a closed port) is not what is used:
            # the server leads, so its publisher delivers and the pass refuses, naming it
            assert res.code == 8, res.err
            assert res.json()["code"] == "conflict"
            assert f"held by host {socket.gethostname()}, pid " in res.json()["message"]
            plane.refused("events", "publish", code=8, error="forbidden")
            plane.ok("destroy", sid)
    finally:
        hub.stop()


def test_a_postgresql_plane_serves_the_same_commands(tmp_path: Path, pg_url: str) -> None:
    with _plane(tmp_path, SANDBOXER_DATABASE_URL=pg_url) as plane:
        made = plane.ok("tokens", "add", "bob")
        assert "bob" in {i["actor"] for i in plane.ok("tokens", "list")["items"]}
        sid = plane.ok("create", "profile.fake", "--quiet", token=made["token"])["id"]
        assert [d["id"] for d in plane.ok("list")["items"]] == [sid]
        assert plane.ok("targets", "add", "far", "fake://far", "--yes")["name"] == "far"
        assert plane.ok("targets", "remove", "far")["name"] == "far"
        assert plane.ok("destroy", sid, token=made["token"])["items"][0]["state"] == \
            "destroyed"
        types = [e["type"] for e in plane.ok("events", "--sandbox", sid)["items"]]
        assert types == ["sandbox.created", "sandbox.ready", "sandbox.destroyed"]
        assert plane.ok("tokens", "remove", made["id"])["actor"] == "bob"
        plane.refused("tokens", "list", code=8, error="forbidden")
        assert not (plane.home / "state.db").exists()  # the server's store is PostgreSQL
