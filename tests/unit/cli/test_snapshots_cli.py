"""`sandboxer snapshot | snapshots list|show|delete | fork | create --from-snapshot` in this
process (the in-process client) over the test-only extension: documents that obey
docs/schemas/snapshot.v1.json, tables, progress on stderr and exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sandboxer import schemas
from sandboxer.cli.main import main

PUBLISHED = Path(__file__).resolve().parents[3] / "docs" / "schemas"


def validator(file: str) -> jsonschema.Draft202012Validator:
    doc = json.loads((PUBLISHED / file).read_text(encoding="utf-8"))
    return jsonschema.Draft202012Validator(schemas.strict(doc))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.usefixtures("settings")
def test_snapshot_fork_and_create_from_a_snapshot_through_the_cli(
        capsys: pytest.CaptureFixture[str], home: Path) -> None:
    snapshot, sandbox = validator("snapshot.v1.json"), validator("sandbox.v1.json")
    sid = cli(capsys, "create", "profile.fake", "-q")["id"]
    (home / "fake" / sid / "work.txt").write_text("done so far")
    code, out, err = run(capsys, "snapshot", sid, "--name", "first", "--retain", "2d")
    assert code == 0, err
    assert "recording a snapshot of" in err  # progress on stderr
    assert "first" in out
    assert "content hash" in out
    snap = cli(capsys, "snapshots", "list")["items"][0]
    snapshot.validate(snap)
    assert (snap["name"], snap["sandbox_id"], snap["state"]) == ("first", sid, "ready")
    assert cli(capsys, "snapshots", "show", snap["id"]) == snap
    assert cli(capsys, "snapshots", "list", "--sandbox", "sbx-aaaaaaaaaa")["items"] == []
    code, out, _ = run(capsys, "snapshots", "list")
    assert snap["id"] in out
    assert "SANDBOX" in out

    made = cli(capsys, "create", "profile.fake", "--from-snapshot", snap["id"], "-q")
    sandbox.validate(made)
    assert made["snapshot"] == snap["id"]
    assert (home / "fake" / made["id"] / "work.txt").read_text() == "done so far"
    code, out, _ = run(capsys, "get", made["id"])
    assert [line.split()[-1] for line in out.splitlines()
            if line.startswith("from snapshot")] == [snap["id"]]

    fork = cli(capsys, "fork", sid, "--label", "branch=b", "--name", "b", "-q")
    sandbox.validate(fork)
    assert (fork["name"], fork["labels"]["branch"], fork["state"]) == ("b", "b", "ready")
    assert (home / "fake" / fork["id"] / "work.txt").read_text() == "done so far"
    assert len(cli(capsys, "snapshots", "list", "--sandbox", sid)["items"]) == 2

    gone = cli(capsys, "snapshots", "delete", snap["id"])
    assert [d["state"] for d in gone["items"]] == ["deleted"]
    snapshot.validate(gone["items"][0])
    assert cli(capsys, "snapshots", "show", snap["id"])["reason"] == "deleted"
    assert cli(capsys, "snapshots", "list", "--all")["items"][0]["id"] == snap["id"]


@pytest.mark.usefixtures("settings")
def test_snapshot_errors_leave_with_their_exit_codes(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "snapshots", "show", "snap-aaaaaaaaaa", "--json")
    assert (code, json.loads(out)["code"]) == (3, "snapshot_not_found")
    assert run(capsys, "snapshot", "sbx-aaaaaaaaaa")[0] == 3
    assert run(capsys, "fork", "sbx-aaaaaaaaaa", "-q")[0] == 3
    sid = cli(capsys, "create", "profile.fake", "-q")["id"]
    code, _, err = run(capsys, "snapshot", sid, "--retain", "90d")
    assert code == 4
    assert "exceeds profile.fake's snapshot.max (30d)" in err
    code, _, err = run(capsys, "create", "profile.fake", "--from-snapshot", "snap-aaaaaaaaaa",
                       "--dry-run")
    assert code == 2
    assert "--from-snapshot" in err
    assert run(capsys, "create", "profile.fake", "--from-snapshot", "snap-aaaaaaaaaa",
               "-q")[0] == 3
    cli(capsys, "destroy", sid)
    code, _, err = run(capsys, "snapshot", sid)
    assert code == 8
    assert "it is destroyed" in err
    code, out, _ = run(capsys, "snapshots", "delete", "snap-aaaaaaaaaa", "snap-bbbbbbbbbb",
                       "--json")
    assert code == 3
    assert [e["code"] for e in json.loads(out)["errors"]] == ["snapshot_not_found"] * 2
