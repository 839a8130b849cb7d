"""sandboxer.openssh: the one place OpenSSH options, argv, stanzas and known_hosts lines are
built. The expected strings are what the three builders it replaced produced, byte for
byte (reachability's descriptor and one-liner, ``sandboxer ssh``, ext's ``ssh_run``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sandboxer import openssh
from sandboxer.config import Settings
from sandboxer.errors import UsageError
from sandboxer.models.extension import Endpoint

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKE comment"
ODD_ID, ODD_KH = "/a b/%h/id", '/x"y/k#h'


def endpoint(port: int = 40123) -> Endpoint:
    return Endpoint(host="10.0.0.5", port=port, user="agent", host_key=KEY,
                    identity_file=ODD_ID, known_hosts_file=ODD_KH)


def test_options_are_quoted_for_sshs_parser() -> None:
    assert openssh.option("IdentityFile", ODD_ID) == 'IdentityFile="/a b/%%h/id"'
    assert openssh.option("UserKnownHostsFile", ODD_KH) == 'UserKnownHostsFile="/x\\"y/k#h"'
    assert openssh.option("HostKeyAlias", "sbx-a") == "HostKeyAlias=sbx-a"
    assert openssh.config_line("IdentityFile", "/p%d") == "IdentityFile /p%%d"
    assert openssh.option_args([openssh.STRICT, openssh.BATCH]) == [
        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]


def test_endpoint_args_pin_the_key_and_never_prompt() -> None:
    assert openssh.endpoint_args(endpoint()) == [
        "-o", 'IdentityFile="/a b/%%h/id"', "-o", "IdentitiesOnly=yes",
        "-o", "IdentityAgent=none", "-o", "StrictHostKeyChecking=yes",
        "-o", 'UserKnownHostsFile="/x\\"y/k#h"', "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-p", "40123"]


def test_argv_puts_the_destination_after_double_dash() -> None:
    assert openssh.argv("ssh", ["-p", "1"], "u@h") == ["ssh", "-p", "1", "--", "u@h"]
    assert openssh.argv("ssh", [], "u@h", "-oX") == ["ssh", "--", "u@h", "-oX"]
    with pytest.raises(ValueError, match="SSH user"):
        openssh.destination("-oProxyCommand=id", "h")
    with pytest.raises(ValueError, match="SSH host"):
        openssh.destination("u", "-p")


def test_command_line_direct_and_through_a_tunnel() -> None:
    assert openssh.command_line(endpoint()) == (
        "ssh -i '/a b/%%h/id' -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes "
        "-o 'UserKnownHostsFile=\"/x\\\"y/k#h\"' -p 40123 agent@10.0.0.5")
    assert openssh.command_line(endpoint(), tunnel_alias="sbx-abc", tunnel_port=2301) == (
        "ssh -i '/a b/%%h/id' -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes "
        "-o 'UserKnownHostsFile=\"/x\\\"y/k#h\"' -o HostKeyAlias=sbx-abc -p 2301 "
        "agent@127.0.0.1")


def test_stanza_renders_pinned_options_in_config_order() -> None:
    opts = [("HostName", "127.0.0.1"), *openssh.pinned(ODD_ID, ODD_KH, "sbx-abc")]
    assert openssh.stanza("h", opts, "c") == (
        '# c\nHost h\n    HostName 127.0.0.1\n    IdentityFile "/a b/%%h/id"\n'
        '    IdentitiesOnly yes\n    UserKnownHostsFile "/x\\"y/k#h"\n'
        "    GlobalKnownHostsFile /dev/null\n    StrictHostKeyChecking yes\n"
        "    HostKeyAlias sbx-abc\n")
    assert ("HostKeyAlias", "sbx-abc") not in openssh.pinned(ODD_ID, ODD_KH)


def test_known_hosts_lines_name_the_port_unless_22() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFAKE"
    assert openssh.known_hosts_line("10.0.0.5", 22, KEY) == f"10.0.0.5 {key}"
    assert openssh.known_hosts_line("127.0.0.1", 2222, KEY, "al") == f"[127.0.0.1]:2222,al {key}"


def test_key_paths_and_known_hosts_files(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    paths = openssh.key_paths(s, "sbx-aaaaaaaaaa")
    assert paths["known_hosts"] == openssh.known_hosts_path(s, "sbx-aaaaaaaaaa")
    assert {p.parent for p in paths.values()} == {s.keys_dir}
    f = tmp_path / "kh"
    openssh.write_known_hosts(f, ["a k", "b k"])
    openssh.ensure_known_hosts(f, "b k")
    openssh.ensure_known_hosts(f, "c k")
    assert f.read_text() == "a k\nb k\nc k\n"
    assert f.stat().st_mode & 0o777 == 0o600


def test_client_raises_the_callers_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UsageError, match="OpenSSH client"):
        openssh.client(UsageError)


def test_cheap_to_import_and_no_cycle_through_the_extension_contract() -> None:
    # base (the contract) never imports the SSH helpers; they build on it (SSHExtension)
    code = ("import sys, sandboxer.openssh, sandboxer.extensions.base; "
            "print(sorted(m for m in ('asyncssh', 'sandboxer.extensions._ssh') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]"
    light = subprocess.run([sys.executable, "-c", "import sys, sandboxer.openssh; "
                            "print('pydantic' in sys.modules)"],
                           capture_output=True, text=True, check=True)
    assert light.stdout.strip() == "False"
