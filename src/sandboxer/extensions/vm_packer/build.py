"""`sandboxer images build PROFILE|TEMPLATE` for ext.vm-packer: which names are Packer's,
and the build itself (the cache and its lock are in ``images``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sandboxer.config import Settings
from sandboxer.errors import InvalidInput

if TYPE_CHECKING:
    from sandboxer.extensions.vm_packer.extension import VMPackerExtension
    from sandboxer.models.profile import Profile

EXTENSION = "ext.vm-packer"
DESCRIBED = "a Packer template (a path: it ends in .json or contains /)"


def is_template_name(name: str) -> bool:
    """A path to a JSON template; anything else is not Packer's (a docker recipe name)."""
    return name.endswith(".json") or "/" in name


def confined_template(settings: Settings, name: str) -> Path:
    """A template a remote caller names: relative to the Packer directory and inside it
    (after symlinks), so a token never makes the server read or run a file elsewhere."""
    from sandboxer.extensions.vm_packer import images

    root = images.packer_dir(settings).resolve()
    rel = Path(name)
    candidate = (root / rel).resolve()
    if rel.is_absolute() or ".." in rel.parts or not candidate.is_relative_to(root) \
            or not candidate.is_file():
        raise InvalidInput(f"no Packer template {name!r} in the server's Packer directory",
                           hint="over the API a template is named relative to the server's "
                           "SANDBOXER_PACKER_DIR, without '..'; `images build` on the "
                           "server itself takes any path")
    return candidate


async def build_profile(ext: VMPackerExtension, profile: Profile, source: Path, *,
                        variables: dict[str, str], force: bool,
                        progress: Callable[[str], None]) -> dict[str, Any]:
    """The Packer image of an ext.vm-packer profile (its template and vars, then ours)."""
    from sandboxer.extensions.vm_packer import images
    from sandboxer.extensions.vm_packer.spec import VMSpec

    spec = ext.parse_spec(profile)
    assert isinstance(spec, VMSpec)  # noqa: S101 - parse_spec made it
    if spec.packer is None:
        raise InvalidInput(f"{profile.id} attaches to an existing VM: there is no image to "
                           "build")
    template = images.resolve_template(ext.settings, spec.packer.template, source)
    return await _build(ext.settings, template, {**spec.packer.vars, **variables},
                        accel=spec.vm.accel, force=force, progress=progress)


async def build_template(settings: Settings, name: str, *, variables: dict[str, str],
                         force: bool, progress: Callable[[str], None],
                         confined: bool = False) -> dict[str, Any]:
    """The image of a Packer JSON template given by path: absolute, or relative to the
    working directory, else to the Packer directory (SANDBOXER_PACKER_DIR) — on the machine
    that builds, which for a server is the server's, however the name reached it."""
    from sandboxer.extensions.vm_packer import images

    if confined:
        template = confined_template(settings, name)
    else:  # resolve_template looks beside its ``source`` file first: the working directory
        template = images.resolve_template(settings, name, Path.cwd() / "-")
    return await _build(settings, template, variables, accel="auto", force=force,
                        progress=progress)


async def _build(settings: Settings, template: Path, variables: dict[str, str], *,
                 accel: str, force: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    from sandboxer.extensions.vm_packer import images

    path, built = await images.build(settings, template, variables, accel=accel,
                                     progress=progress, force=force)
    return {"image": f"vm:{path.name}", "target": "qemu", "path": str(path),
            "built": built, "template": str(template)}
