"""ext.compose-ssh secrets: a tmpfs in the override, value-free files, values on stdin only."""

from __future__ import annotations

import asyncio
import io
import subprocess
import tarfile
from pathlib import Path

import pytest
from pydantic import SecretStr

from sandboxer.errors import InvalidInput
from sandboxer.extensions.compose_ssh import override as ov
from sandboxer.extensions.compose_ssh import secrets as cs
from sandboxer.extensions.compose_ssh.remote import Completed, Runner
from sandboxer.extensions.compose_ssh.spec import ComposeSpec

VALUE = "cnry-compose-0c4d91e2"


class Recorder(Runner):
    def __init__(self) -> None:
        self.name, self.base_dir = "t", "/x"
        self.calls: list[tuple[list[str], bytes | None]] = []

    async def run(self, argv: list[str], *, input: bytes | None = None,
                  timeout: float = 120.0) -> Completed:
        self.calls.append((argv, input))
        return Completed(argv, 0, b"", b"")

    async def run_with_file(self, argv: list[str], stdin: Path,
                            timeout: float = 3600.0) -> Completed:
        raise NotImplementedError


def test_override_adds_the_tmpfs_to_the_main_service_only() -> None:
    doc = {"services": {"main": {"image": "i"}, "db": {"image": "d"}}}
    spec = ComposeSpec(service="main", compose=doc)
    plain = ov.build(doc, spec, sandbox_id="sbx-a", instance="i", user="u", env={}, bind="b",
                     port=1)
    assert not [v for v in plain["services"]["main"]["volumes"] if v["type"] == "tmpfs"]
    extra = ov.build(doc, spec, sandbox_id="sbx-a", instance="i", user="u", env={}, bind="b",
                     port=1, secrets=True)
    assert [v for v in extra["services"]["main"]["volumes"] if v["type"] == "tmpfs"] == [
        {"type": "tmpfs", "target": "/run/secrets", "tmpfs": {"size": 4 << 20, "mode": 0o755}}]
    assert "volumes" not in extra["services"]["db"]


def test_loader_files_hold_no_value_and_are_root_owned() -> None:
    with tarfile.open(fileobj=io.BytesIO(cs.loader_tarball())) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert {cs.LOADER[1:], cs.SESSION[1:], cs.SSHD_DROPIN[1:]} <= set(members)
        assert members[cs.SESSION[1:]].mode == 0o755
        assert all(m.uid == 0 and m.gid == 0 for m in members.values())
        dropin = tar.extractfile(members[cs.SSHD_DROPIN[1:]])
        assert dropin is not None
        assert f"ForceCommand {cs.SESSION}" in dropin.read().decode()


def test_fill_streams_values_on_stdin_only() -> None:
    r = Recorder()
    asyncio.run(cs.fill(r, "cid", {"B": SecretStr(VALUE), "A": SecretStr("x")}, "agent"))
    [(argv, data)] = r.calls  # one exec for every secret
    assert argv[:6] == ["docker", "exec", "-i", "-u", "0", "cid"]
    assert argv[-3:] == ["agent", "0016", "0"]
    assert not any(VALUE in word for word in argv)
    assert data is not None
    assert data.decode().splitlines() == ["A x", f"B {cs.escaped(VALUE.encode())}"]


def test_fill_refuses_a_name_that_is_not_a_variable() -> None:
    r = Recorder()
    with pytest.raises(InvalidInput, match="secret name 'A B'"):
        asyncio.run(cs.fill(r, "cid", {"A B": SecretStr("cnry-x")}, "agent"))
    assert r.calls == []


def test_escaped_values_come_back_byte_for_byte_through_printf() -> None:
    value = "a b\\c\n\t'\"$(x)`%s%%\\0101 é\x01".encode()
    word = cs.escaped(value)
    assert " " not in word
    assert "\n" not in word
    for shell in ("sh", "bash"):
        out = subprocess.run([shell, "-c", 'printf "%b" "$1"', shell, word],
                             capture_output=True, check=True).stdout
        assert out == value


def test_env_conf_replaces_what_provision_bound() -> None:
    conf = cs.env_conf(["PATH=/bin", "LANG=C", "OLD=1", "KEEP=k", "SANDBOXER_ID=sbx-x"],
                       ["OLD", "KEEP2"], {"NEW": 'a "q" \\ b', "MULTI": "a\nb"})
    lines = conf.splitlines()
    assert lines[0].startswith("#")
    assert lines[1:] == ['SetEnv "KEEP=k" "LANG=C" "NEW=a \\"q\\" \\\\ b"']
    assert cs.env_conf([], [], {}).count("\n") == 1  # no SetEnv line at all
