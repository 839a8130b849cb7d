"""`images build PROFILE` for compose profiles, and the hint when an image is missing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandboxer.client.local import LocalClient
from sandboxer.config import Settings
from sandboxer.errors import InvalidInput
from sandboxer.extensions.compose_ssh import images
from sandboxer.extensions.compose_ssh.extension import ComposeSSHExtension


@pytest.fixture
def recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    root = tmp_path / "images"
    for name in ("sandbox-base", "agent-dev"):
        (root / name).mkdir(parents=True)
        (root / name / "build.sh").write_text("exit 0\n")
    monkeypatch.setenv("SANDBOXER_IMAGES", str(root))
    calls: list[tuple[str, str]] = []

    async def build(ext: Any, name: str, target: str = "local",
                    progress: Any = None) -> dict[str, Any]:
        calls.append((name, target))
        return {"image": f"sandboxer/{name}:0.1.0", "target": target}

    monkeypatch.setattr(images, "build_recipe", build)
    return calls


def test_a_compose_profile_builds_the_images_it_uses(
        home: Path, recipes: list[tuple[str, str]]) -> None:
    built = LocalClient(Settings.from_env()).images_build("profile.agent-dev", target="local")
    assert recipes == [("agent-dev", "local")]
    assert built["images"] == ["sandboxer/agent-dev:0.1.0"]


def test_a_profile_without_images_says_so(home: Path) -> None:
    with pytest.raises(InvalidInput, match="needs no image"):
        LocalClient(Settings.from_env()).images_build("profile.local")


def test_a_missing_image_names_the_profile_and_its_image() -> None:
    doc = {"services": {"main": {"image": "sandboxer/agent-dev:0.1.0"}, "db": {"build": "."}}}

    class R:
        name = "coulombcore"

    err = ComposeSSHExtension._explain(R(), "Error: No such image: sandboxer/agent-dev:0.1.0",  # type: ignore[arg-type]
                                       "profile.agent-dev", doc)
    assert "sandboxer/agent-dev:0.1.0" in err.message
    assert "images build profile.agent-dev --target coulombcore" in (err.hint or "")
    assert "build base" not in err.render()
