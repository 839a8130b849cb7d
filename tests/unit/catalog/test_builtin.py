"""Every shipped profile loads, validates (its spec too) and is listed in SCOPE.md."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from sandboxer.catalog import Catalog
from sandboxer.catalog.loader import BUILTIN_DIR
from sandboxer.config import Settings
from sandboxer.extensions import base as extensions
from sandboxer.models.common import format_duration
from sandboxer.models.profile import Profile

SCOPE = Path(__file__).parents[3] / "SCOPE.md"
BUILTIN = sorted(yaml.safe_load(p.read_text())["id"] for p in BUILTIN_DIR.glob("*.yaml"))


def scope_rows() -> dict[str, list[str]]:
    rows = {}
    for line in SCOPE.read_text().splitlines():
        m = re.match(r"^\| `(profile\.[a-z0-9.-]+)` \|(.*)\|$", line)
        if m:
            rows[m.group(1)] = [c.strip().strip("`") for c in m.group(2).split("|")]
    return rows


@pytest.mark.parametrize("profile_id", BUILTIN)
def test_builtin_profile_loads_and_validates(settings: Settings, profile_id: str) -> None:
    catalog = Catalog(settings)
    profile = catalog.get(profile_id)
    ext = extensions.load(profile.extension)(settings)
    spec = ext.parse_spec(profile)
    raw = yaml.safe_load(catalog.source(profile_id).path.read_text())
    merged = profile.model_dump(mode="json")
    merged["spec"] = {}
    # The profile (after `extends`) satisfies the JSON Schemas of the profile and its spec.
    jsonschema.validate(merged, Profile.model_json_schema(mode="validation"))
    assert raw["id"] == profile_id
    jsonschema.validate(spec.model_dump(mode="json"), type(spec).model_json_schema())
    assert profile.description


def test_scope_catalog_matches_the_shipped_catalog(settings: Settings) -> None:
    rows = scope_rows()
    assert sorted(rows) == BUILTIN, "SCOPE.md's catalog table and the shipped profiles differ"
    catalog = Catalog(settings)
    for pid, (extension, ttl, actor, route, description) in rows.items():
        p = catalog.get(pid)
        assert extension == p.extension, pid
        assert ttl == f"{format_duration(p.ttl.default)} / {format_duration(p.ttl.max)}", pid
        assert actor == (p.actor or "-"), pid
        assert route == p.route, pid
        assert description == p.description, pid


@pytest.mark.parametrize("doc", ["glas-harness.md", "snuggle-inventor.md"])
def test_consumer_docs_reference_real_profile_ids(doc: str) -> None:
    text = (SCOPE.parent / "docs" / "integrations" / doc).read_text()
    named = set(re.findall(r"`(profile\.[a-z0-9.-]*[a-z0-9])`", text))
    assert named, f"{doc} names no profile"
    unknown = named - set(BUILTIN)
    assert not unknown, f"{doc} names profiles that are not shipped: {unknown}"
