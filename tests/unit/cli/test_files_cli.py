"""`sandboxer cp` and `sandboxer port-forward` through the CLI entry point (test extension):
the argv they build and what they refuse before running OpenSSH. The real scp and ssh -L
runs are in tests/integration/test_files_sftp.py (a real sshd) and the ext.local tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sandboxer.cli.files import parse_ports, scp_argv
from sandboxer.cli.main import main
from sandboxer.errors import UsageError


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def created(capsys: pytest.CaptureFixture[str], profile: str = "profile.fake") -> str:
    code, out, err = run(capsys, "create", profile, "--json", "-q")
    assert code == 0, err
    sid: str = json.loads(out)["id"]
    return sid


REACH: dict[str, Any] = {"sandbox_id": "sbx-abcdefghij", "host": "127.0.0.1", "port": 40123,
                         "user": "agent", "identity_file": "/k/id", "tunnel": None}


def test_scp_argv_pins_the_host_key_and_ends_options_with_double_dash() -> None:
    argv = scp_argv(REACH, "/k/known", "local:name", "dir/f", into=True, recursive=True,
                    preserve=True)
    cut = argv.index("--")
    assert argv[1:4] == ["-s", "-r", "-p"]
    assert argv[cut + 1:] == ["./local:name", "127.0.0.1:dir/f"]  # never a host "local"
    opts = argv[:cut]
    for want in ("StrictHostKeyChecking=yes", "UserKnownHostsFile=/k/known",
                 "IdentitiesOnly=yes", "IdentityFile=/k/id", "Port=40123", "User=agent",
                 "IdentityAgent=none"):
        assert want in opts, want
    out = scp_argv({**REACH, "host": "::1"}, "/k/known", "-rf", "/tmp/x", into=False)
    assert out[out.index("--") + 1:] == ["[::1]:-rf", "/tmp/x"]
    assert "-r" not in out[:out.index("--")]


def test_parse_ports() -> None:
    assert parse_ports("8080") == (8080, 8080)
    assert parse_ports("8080:18080") == (8080, 18080)
    for bad in ("0", "65536", "80:", "x", "80:y", "-1"):
        with pytest.raises(UsageError):
            parse_ports(bad)


@pytest.mark.usefixtures("settings")
def test_cp_and_port_forward_refuse_before_running_openssh(
        capsys: pytest.CaptureFixture[str], profiles_dir: Path) -> None:
    (profiles_dir / "fwd.yaml").write_text(
        "id: profile.fwd\nextension: ext.fake\nreachability: {forward: [3000, 8080]}\n")
    sid = created(capsys, "profile.fwd")
    code, out, _ = run(capsys, "reachability", "show", sid, "--json")
    assert (code, json.loads(out)["forward"]) == (0, [3000, 8080])
    # A port the profile does not list: exit 4, naming those it does.
    code, _, err = run(capsys, "port-forward", sid, "22")
    assert code == 4
    assert f"port 22 of sandbox {sid} is not forwarded" in err
    assert "lists 3000, 8080" in err
    code, _, err = run(capsys, "port-forward", sid, "80:x")
    assert (code, "LOCAL: expected a port" in err) == (2, True)
    # Neither side, or both sides, a sandbox: usage.
    code, _, err = run(capsys, "cp", "a", "b")
    assert (code, "exactly one of SRC and DST is ID:PATH" in err) == (2, True)
    code, _, err = run(capsys, "cp", f"{sid}:a", f"{sid}:b")
    assert (code, "not two sandboxes" in err) == (2, True)
    code, _, err = run(capsys, "cp", "a", f"{sid}:bad\npath", "--json")
    assert code == 4
    # Another home's id, and a sandbox that is not ready.
    code, _, err = run(capsys, "cp", "a", "sbx-aaaaaaaaaa:f")
    assert code == 3
    assert run(capsys, "stop", sid)[0] == 0
    for argv in (("cp", "f", f"{sid}:f"), ("cp", f"{sid}:f", "f"),
                 ("port-forward", sid, "8080")):
        code, _, err = run(capsys, *argv)
        assert code == 8, argv
        assert "is stopped" in err
