"""Option injection (issue 12, item 2): every user and host that reaches an ssh argv is
checked by one rule, and every argv built puts the destination after ``--``."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from pydantic import ValidationError

from sandboxer.errors import ProvisionFailed
from sandboxer.extensions._ssh import ssh_argv
from sandboxer.extensions.base import Endpoint
from sandboxer.extensions.vm_packer import remote
from sandboxer.extensions.vm_packer.spec import VMSpec
from sandboxer.models.profile import ReachabilitySpec
from sandboxer.reachability import ssh_command

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv0000000000000000000000000000000000000000000"
HOSTILE_USERS = ["-oProxyCommand=id>/tmp/x;", "-l", "root@evil", "a b", "agent\n", "Agent",
                 "", "x" * 33, "a;id", "$(id)"]
HOSTILE_HOSTS = ["-oProxyCommand=id", "-p", "h\nProxyCommand id", "u@h", "h h", ".h", "",
                 "h;id", "h/../x"]


def endpoint(**kw: str) -> Endpoint:
    fields = {"host": "127.0.0.1", "port": 2222, "user": "agent", "host_key": KEY,
              "identity_file": "/k/id", "known_hosts_file": "/k/kh", **kw}
    return Endpoint.model_validate(fields)


def forged(**kw: str) -> Endpoint:
    """An endpoint that skipped validation, as a bug elsewhere might hand one over."""
    fields = endpoint().model_dump()
    fields.update(kw)
    return Endpoint.model_construct(**fields)


@pytest.mark.parametrize("user", HOSTILE_USERS)
def test_a_hostile_user_is_refused_everywhere(user: str) -> None:
    with pytest.raises(ValidationError, match="POSIX user name"):
        endpoint(user=user)
    with pytest.raises(ValidationError, match="POSIX user name"):
        ReachabilitySpec.model_validate({"user": user})
    with pytest.raises(ValidationError, match=r"ssh\.user"):
        VMSpec.model_validate({"packer": {"template": "t.json"}, "ssh": {"user": user}})
    with pytest.raises(ValidationError, match=r"attach\.user"):
        VMSpec.model_validate({"attach": {"host": "h", "user": user, "host_key": KEY,
                                          "identity": "/k"}})
    # Handed over unchecked, the argv builders still refuse it.
    with pytest.raises(ProvisionFailed, match="SSH user"):
        ssh_argv(forged(user=user), "true")
    with pytest.raises(ValueError, match="SSH user"):
        ssh_command(forged(user=user))


@pytest.mark.parametrize("host", HOSTILE_HOSTS)
def test_a_hostile_host_is_refused_everywhere(host: str) -> None:
    with pytest.raises(ValidationError, match="host name or IP address"):
        endpoint(host=host)
    with pytest.raises(ValidationError, match=r"attach\.host"):
        VMSpec.model_validate({"attach": {"host": host, "user": "ops", "host_key": KEY,
                                          "identity": "/k"}})
    with pytest.raises(ProvisionFailed, match="SSH host"):
        ssh_argv(forged(host=host), "true")
    with pytest.raises(ValueError, match="SSH host"):
        ssh_command(forged(host=host))


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "vm-1.lan", "docker_host", "10.0.0.5"])
def test_names_that_are_fine(host: str) -> None:
    assert endpoint(host=host, user="_svc-1").host == host


def test_ssh_argv_puts_the_destination_after_double_dash() -> None:
    argv = ssh_argv(endpoint(), "-oProxyCommand=id")
    cut = argv.index("--")
    assert argv[cut + 1:] == ["agent@127.0.0.1", "-oProxyCommand=id"]
    assert argv.count("--") == 1  # a second one would become part of the command
    assert all(not a.startswith("agent@") for a in argv[:cut])
    assert ssh_argv(endpoint())[-2:] == ["--", "agent@127.0.0.1"]


def test_vm_remote_runs_through_the_same_builder() -> None:
    admin = remote.admin_endpoint("10.0.0.5", 22, "ops", KEY, "/k", Path("/k/kh"))
    argv = ssh_argv(admin, remote.revoke_command("sbx-aaaaaaaaaa"))
    assert argv[argv.index("--") + 1] == "ops@10.0.0.5"
    with pytest.raises(ValidationError):
        remote.admin_endpoint("10.0.0.5", 22, "-oProxyCommand=id", KEY, "/k", Path("/k/kh"))


def test_ssh_command_ends_with_a_checked_destination() -> None:
    argv = shlex.split(ssh_command(endpoint()))
    assert argv[-1] == "agent@127.0.0.1"
    assert argv[-3:-1] == ["-p", "2222"]
