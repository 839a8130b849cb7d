"""The real-components infrastructure works as ext.compose-ssh will use it.

Through the test sshd (host key pinned) the remote docker CLI has compose v2, and a
one-service project from sandboxer/base, locked down the way the generated override locks
it down, accepts a key login with its pinned host key, shows its environment and is removed
by ``docker compose down -v --remove-orphans``.
"""

from __future__ import annotations

import json
import logging
import secrets
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yaml

if TYPE_CHECKING:
    from .conftest import SshTarget

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)


def test_remote_docker_has_compose_v2(ssh_target: SshTarget) -> None:
    version = ssh_target.run(["docker", "compose", "version", "--short"])
    assert version.stdout.decode().strip().lstrip("v").startswith("2."), version.stdout
    engine = ssh_target.run(["docker", "version", "--format", "{{.Server.Version}}"])
    assert engine.stdout.strip(), "the remote docker CLI reached no engine"


def test_remote_user_reaches_the_test_engine(ssh_target: SshTarget) -> None:
    env = ssh_target.run(["sh", "-c", 'printf %s "$DOCKER_HOST"']).stdout.decode()
    assert env == ssh_target.docker_host
    assert ssh_target.run(["id", "-un"]).stdout.decode().strip() == ssh_target.ssh_user


def _upload(target: SshTarget, path: str, data: bytes) -> None:
    """Write a file 0600 on the target through SSH stdin, as the extension uploads files."""
    target.run(["sh", "-c", 'umask 077 && cat > "$1"', "sh", path], input_data=data)


def _sandbox_ssh(port: int, user: str, identity: Path, known_hosts: Path,
                 command: list[str]) -> subprocess.CompletedProcess[bytes]:
    argv = ["ssh", "-p", str(port), "-i", str(identity), "-o", "IdentitiesOnly=yes",
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR",
            f"{user}@127.0.0.1", "--", shlex.join(command)]
    return subprocess.run(argv, capture_output=True, timeout=30, check=False,
                          stdin=subprocess.DEVNULL)


def test_compose_sandbox_from_base_image(ssh_target: SshTarget, tmp_path: Path) -> None:
    sid = f"sbx-infra{secrets.token_hex(3)}"
    project = sid
    user = "agent"
    remote_dir = f"{ssh_target.home}/.sandboxer-test/{sid}"
    keys_dir = f"{remote_dir}/keys"

    # Keys made locally, as sand-boxer makes them; only the public half of the client key
    # and the host private key travel to the target.
    keygen = ["ssh-keygen", "-q", "-t", "ed25519", "-N", ""]
    subprocess.run([*keygen, "-C", sid, "-f", str(tmp_path / "host")], check=True)
    subprocess.run([*keygen, "-C", sid, "-f", str(tmp_path / "client")], check=True)
    host_pub = " ".join((tmp_path / "host.pub").read_text().split()[:2])

    compose = {
        "services": {
            "main": {
                "image": ssh_target.image,
                "environment": {
                    "SANDBOXER_USER": user,
                    "SANDBOXER_ID": sid,
                    # Compose interpolates ${VAR} in the file on the target: "$$" is a "$".
                    "GREETING": 'hello "compose" $$HOME #not-a-comment',
                },
                "labels": {"sandboxer.id": sid},
                "ports": [{"target": 22, "host_ip": "127.0.0.1", "protocol": "tcp"}],
                "volumes": [{"type": "bind", "source": keys_dir,
                             "target": "/etc/sandboxer", "read_only": True}],
                "cap_drop": ["ALL"],
                "cap_add": list(ssh_target.cap_add),
                "security_opt": ["no-new-privileges:true"],
                "healthcheck": {"test": ["CMD", "/usr/local/sbin/sandboxer-healthcheck"],
                                "interval": "1s", "timeout": "3s", "retries": 60},
            }
        }
    }
    compose_file = f"{remote_dir}/compose.yaml"
    dc = ["docker", "compose", "-p", project, "-f", compose_file]
    try:
        ssh_target.run(["install", "-d", "-m", "0700", remote_dir, keys_dir])
        _upload(ssh_target, f"{keys_dir}/ssh_host_ed25519_key",
                (tmp_path / "host").read_bytes())
        _upload(ssh_target, f"{keys_dir}/authorized_keys", (tmp_path / "client.pub").read_bytes())
        _upload(ssh_target, compose_file, yaml.safe_dump(compose).encode())

        started = time.monotonic()
        ssh_target.run([*dc, "up", "-d", "--wait"], timeout=180)
        up_done = time.monotonic()
        published = ssh_target.run([*dc, "port", "main", "22"]).stdout.decode().strip()
        host, _, port_text = published.rpartition(":")
        assert host == "127.0.0.1", published
        port = int(port_text)

        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub}\n")
        probe = ["sh", "-c", 'id -un; id -u; printf "%s\\n" "$GREETING"; '
                 'grep ^CapEff /proc/self/status']
        deadline = time.monotonic() + 30
        while True:
            done = _sandbox_ssh(port, user, tmp_path / "client", known_hosts, probe)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        first_ssh = time.monotonic()
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        log.info("compose up --wait %.2fs, first SSH command after %.2fs",
                 up_done - started, first_ssh - started)
        name, uid, greeting, capeff = done.stdout.decode().splitlines()
        assert (name, uid) == (user, "1000")
        assert greeting == 'hello "compose" $HOME #not-a-comment'
        assert capeff.split() == ["CapEff:", "0000000000000000"]
        sandbox_only = ["sh", "-c", 'printf %s "${SANDBOXER_ID-unset}"']
        hidden = _sandbox_ssh(port, user, tmp_path / "client", known_hosts, sandbox_only)
        assert hidden.stdout == b"unset"

        # A wrong host key is refused: the pin is what protects the login.
        other = tmp_path / "other"
        subprocess.run([*keygen, "-f", str(other)], check=True)
        other_pub = " ".join(other.with_suffix(".pub").read_text().split()[:2])
        wrong = tmp_path / "wrong_known_hosts"
        wrong.write_text(f"[127.0.0.1]:{port} {other_pub}\n")
        assert _sandbox_ssh(port, user, tmp_path / "client", wrong, ["true"]).returncode != 0

        inspect = ssh_target.run(["docker", "inspect", f"{project}-main-1"])
        info = json.loads(inspect.stdout)[0]
        assert info["Config"]["Labels"]["sandboxer.id"] == sid
        assert info["HostConfig"]["CapDrop"] == ["ALL"]
        granted = sorted(c.removeprefix("CAP_") for c in info["HostConfig"]["CapAdd"])
        assert granted == sorted(ssh_target.cap_add)
        assert "no-new-privileges:true" in info["HostConfig"]["SecurityOpt"]
        assert not info["HostConfig"]["Privileged"]
        logs = ssh_target.run([*dc, "logs", "--no-color", "main"]).stdout.decode()
        assert "hello" not in logs, "an environment value reached the container log"
    finally:
        ssh_target.run([*dc, "down", "-v", "--remove-orphans"], timeout=120, check=False)
        left = ssh_target.run(["docker", "ps", "-aq", "--filter",
                               f"label=com.docker.compose.project={project}"])
        networks = ssh_target.run(["docker", "network", "ls", "-q", "--filter",
                                   f"label=com.docker.compose.project={project}"])
        ssh_target.run(["rm", "-rf", remote_dir], check=False)
    assert left.stdout.strip() == b"", "containers left after down"
    assert networks.stdout.strip() == b"", "networks left after down"


def test_known_hosts_line_pins_the_target(ssh_target: SshTarget) -> None:
    line = ssh_target.known_hosts
    assert line.startswith(f"[127.0.0.1]:{ssh_target.ssh_port} ssh-ed25519 ")
    with tempfile.NamedTemporaryFile("w", suffix=".known_hosts") as bad:
        bad.write(f"[127.0.0.1]:{ssh_target.ssh_port} ssh-ed25519 "
                  "AAAAC3NzaC1lZDI1NTE5AAAAIBdPLFkNxiRkyBr6x2ZUzw/IlfcL9ZSDFUEnoU7+3dV1\n")
        bad.flush()
        argv = ssh_target.ssh_argv(["true"])
        argv[argv.index(f"UserKnownHostsFile={ssh_target.known_hosts_file}")] = (
            f"UserKnownHostsFile={bad.name}")
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False,
                              stdin=subprocess.DEVNULL)
    assert done.returncode != 0
