"""docs/schemas/*.json are generated from the models, and what the CLI prints obeys them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sandboxer import schemas
from sandboxer.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = ROOT / "docs" / "schemas"


def validator(file: str, *, strict: bool = True) -> jsonschema.Draft202012Validator:
    doc = json.loads((PUBLISHED / file).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(doc)
    return jsonschema.Draft202012Validator(schemas.strict(doc) if strict else doc)


REACH = "reachability.v1.json"
SANDBOX = "sandbox.v1.json"


@pytest.mark.parametrize("file", sorted(schemas.MODELS))
def test_published_schema_matches_the_models(file: str) -> None:
    path = PUBLISHED / file
    assert path.exists(), f"{path} is missing: run `python3 -m sandboxer.schemas`"
    assert path.read_text(encoding="utf-8") == schemas.render()[file], (
        f"{path} drifted from the models: run `python3 -m sandboxer.schemas`"
    )


def test_check_mode_reports_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert schemas.main(["--out", str(tmp_path), "--check"]) == 1
    assert not list(tmp_path.iterdir())
    assert schemas.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(schemas.MODELS)
    assert schemas.main(["--out", str(tmp_path), "--check"]) == 0
    (tmp_path / REACH).write_text("{}\n")
    assert schemas.main(["--out", str(tmp_path), "--check"]) == 1
    assert "differ from the models" in capsys.readouterr().err


def test_every_key_is_required_and_new_keys_are_allowed() -> None:
    published = validator(REACH, strict=False).schema
    assert published["required"] == list(published["properties"])
    assert "tunnel_via" in published["required"]
    assert "additionalProperties" not in published
    doc = {"schema": "sandboxer.reachability/v1", "sandbox_id": "sbx-aaaaaaaaaa",
           "transport": "ssh", "host": "h", "port": 22, "user": "u", "identity_file": "/i",
           "known_hosts": "h k", "ssh_command": "ssh h", "tunnel": None, "tunnel_via": None,
           "identity": None, "tunnel_status": None, "forward": []}
    validator(REACH, strict=False).validate({**doc, "added_in_a_later_v1": 1})
    with pytest.raises(jsonschema.ValidationError):
        validator(REACH).validate({**doc, "added_in_a_later_v1": 1})
    for key, bad in [("port", 0), ("tunnel_via", "a b"), ("transport", "tcp")]:
        with pytest.raises(jsonschema.ValidationError):
            validator(REACH, strict=False).validate({**doc, key: bad})
    without = dict(doc)
    del without["identity"]
    with pytest.raises(jsonschema.ValidationError):
        validator(REACH, strict=False).validate(without)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code = main([*argv, "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.mark.usefixtures("settings")
@pytest.mark.parametrize("env", [{}, {"SANDBOXER_TUNNEL_VIA": "obr-x",
                                      "SANDBOXER_TUNNEL_IDENTITY": "agt"}])
def test_documents_printed_by_the_cli_obey_the_schemas(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, env: dict[str, str]
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    created = cli(capsys, "create", "profile.fake", "-q")
    sid = created["id"]
    sandbox, reach = validator(SANDBOX), validator(REACH)
    sandbox.validate(created)
    sandbox.validate(cli(capsys, "get", sid))
    reach.validate(cli(capsys, "reachability", "show", sid))
    for item in cli(capsys, "list")["items"]:
        sandbox.validate(item)
    sandbox.validate(cli(capsys, "extend", sid, "--ttl", "30m"))
    assert (created["reachability"]["tunnel_via"] is not None) == bool(env)
    cli(capsys, "destroy", sid)
    sandbox.validate(cli(capsys, "get", sid))  # destroyed: reachability kept or null
