"""`sandboxer images build PROFILE|TEMPLATE` for ext.vm-packer: which names are Packer's,
and the build itself (the cache and its lock are in ``images``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sandboxer.config import Settings
from sandboxer.errors import InvalidInput

EXTENSION = "ext.vm-packer"


def is_packer_name(settings: Settings, name: str) -> bool:
    """A profile id (``profile.…``) or a path to a JSON template; anything else is a
    docker recipe name (``base``)."""
    return name.startswith("profile.") or name.endswith(".json") or "/" in name


async def build_named(settings: Settings, name: str, *, variables: dict[str, str],
                      force: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    from sandboxer.extensions.vm_packer import images

    accel_wanted = "auto"
    if name.startswith("profile."):
        from sandboxer.catalog import Catalog
        from sandboxer.extensions.vm_packer.spec import VMSpec

        catalog = Catalog(settings)
        profile = catalog.get(name)
        if profile.extension != EXTENSION:
            raise InvalidInput(f"{name} is an {profile.extension} profile; `images build` "
                               f"takes a profile only for {EXTENSION}",
                               hint="for a docker image recipe give its name (e.g. base)")
        from sandboxer.extensions.vm_packer.extension import VMPackerExtension

        spec = VMPackerExtension(settings).parse_spec(profile)
        assert isinstance(spec, VMSpec)  # noqa: S101 - parse_spec made it
        if spec.packer is None:
            raise InvalidInput(f"{name} attaches to an existing VM: there is no image to build")
        template = images.resolve_template(settings, spec.packer.template,
                                           catalog.source(name).path)
        variables = {**spec.packer.vars, **variables}
        accel_wanted = spec.vm.accel
    else:
        template = images.resolve_template(settings, str(Path(name).absolute()), None)
    path, built = await images.build(settings, template, variables, accel=accel_wanted,
                                     progress=progress, force=force)
    return {"image": f"vm:{path.name}", "target": "qemu", "path": str(path),
            "built": built, "template": str(template)}
