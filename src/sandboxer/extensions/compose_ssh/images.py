"""`sandboxer images build NAME [--target T]`: run a recipe from images/ for a target.

Recipes build from Debian packages only (no registry pull is possible here). On the local
target the recipe imports the image itself; for a remote target the rootfs tar is built
here and streamed over the target's SSH connection into `docker import`.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sandboxer
from sandboxer import childenv, envvars
from sandboxer.config import Settings
from sandboxer.errors import InvalidInput, ProvisionFailed
from sandboxer.extensions.compose_ssh.config import LOCAL
from sandboxer.extensions.compose_ssh.remote import local_env

if TYPE_CHECKING:
    from sandboxer.extensions.compose_ssh.extension import ComposeSSHExtension

_RECIPE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def images_dir(settings: Settings) -> Path:
    chosen = envvars.path(settings.env, "SANDBOXER_IMAGES", directory=True)
    return chosen or Path(sandboxer.__file__).resolve().parents[2] / "images"


def known(settings: Settings) -> list[str]:
    """The recipes of images/, by the name `images build` takes (``base``)."""
    return sorted(p.parent.name.removeprefix("sandbox-")
                  for p in images_dir(settings).glob("*/build.sh"))


def described(settings: Settings) -> str:
    """What `images build NAME` can build from images/, for a message."""
    return (f"a recipe in {images_dir(settings)}: {', '.join(known(settings)) or 'none'} "
            "(SANDBOXER_IMAGES names another folder)")


def claims(settings: Settings, name: str) -> bool:
    """Whether ``name`` is a recipe of images/ (``base`` or ``sandbox-base``)."""
    root = images_dir(settings)
    return bool(_RECIPE_NAME.fullmatch(name)) and any(
        (d / "build.sh").is_file() for d in (root / name, root / f"sandbox-{name}"))


def recipe(settings: Settings, name: str) -> Path:
    root = images_dir(settings)
    script = next((d / "build.sh" for d in (root / name, root / f"sandbox-{name}")
                   if (d / "build.sh").is_file()), root / name / "build.sh")
    if "/" in name or not script.is_file():
        raise InvalidInput(f"no image recipe {name!r} in {images_dir(settings)}",
                           hint=f"known recipes: {', '.join(known(settings)) or 'none'} "
                           "(SANDBOXER_IMAGES names another folder)")
    return script


def images_of(doc: dict[str, Any]) -> list[str]:
    """The images a compose document's services run, in order, once each."""
    services = doc.get("services") if isinstance(doc, dict) else None
    found = [s.get("image") for s in (services or {}).values() if isinstance(s, dict)]
    return list(dict.fromkeys(i for i in found if isinstance(i, str)))


def recipes_for(settings: Settings, images: list[str]) -> list[str]:
    """Recipes of images/ that build those images (``sandboxer/NAME:VERSION``)."""
    names = [i.partition(":")[0].removeprefix("sandboxer/") for i in images
             if i.startswith("sandboxer/")]
    root = images_dir(settings)
    return [n for n in dict.fromkeys(names) if "/" not in n and any(
        (root / d / "build.sh").is_file() for d in (n, f"sandbox-{n}"))]


async def build_for(ext: ComposeSSHExtension, profile_id: str, doc: dict[str, Any],
                    target: str, progress: Callable[[str], None]) -> dict[str, Any]:
    """``images build PROFILE``: run the recipe of every image the profile's compose uses."""
    images = images_of(doc)
    names = recipes_for(ext.settings, images)
    if not names:
        raise InvalidInput(f"{profile_id} uses no image a recipe in {images_dir(ext.settings)} "
                           f"builds (it uses: {', '.join(images) or 'none'})")
    built = [await build_recipe(ext, name, target, progress) for name in names]
    tags = [b["image"] for b in built]
    return {"image": ", ".join(tags), "images": tags, "target": target}


async def _script(argv: list[str], env: dict[str, str],
                  progress: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run a build script, passing each line of its output on as progress."""
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None  # noqa: S101 - PIPE was asked for
    tail: list[str] = []
    async for raw in proc.stdout:
        line = raw.decode("utf-8", "replace").rstrip()
        tail = [*tail[-19:], line]
        progress(line)
    return await proc.wait(), tail


async def build_recipe(ext: ComposeSSHExtension, name: str, target: str = LOCAL,
                       progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """``images build NAME``: run the recipe images/sandbox-NAME for ``target``."""
    settings = ext.settings
    script = recipe(settings, name)
    version = (script.parent / "VERSION").read_text().strip()
    tag = f"sandboxer/{name}:{version}"
    env = childenv.for_tool({**os.environ, **settings.env})
    if target == LOCAL:
        env.update(local_env(settings.env))
        rc, tail = await _script(["bash", str(script)], env, progress)
        if rc != 0:
            raise ProvisionFailed(f"image recipe {name} failed (exit {rc}):\n" + "\n".join(tail))
        return {"image": tag, "target": target}
    with tempfile.TemporaryDirectory(prefix="sbx-image-") as tmp:
        tar = Path(tmp) / "rootfs.tar"
        rc, tail = await _script(["bash", str(script), "--output-tar", str(tar)], env, progress)
        if rc != 0:
            raise ProvisionFailed(f"image recipe {name} failed (exit {rc}):\n" + "\n".join(tail))
        changes = await asyncio.create_subprocess_exec(
            "bash", str(script), "--print-changes", stdout=asyncio.subprocess.PIPE, env=env)
        out, _ = await changes.communicate()
        argv = ["docker", "import"]
        for change in out.decode().splitlines():
            if change.strip():
                argv += ["--change", change]
        progress(f"importing {tag} on target {target}")
        async with await ext.runner(target) as r:
            done = await r.run_with_file([*argv, "-", tag], tar)
            if done.rc != 0:
                raise ProvisionFailed(f"docker import on target {target} failed: {done.tail()}")
            await r.check(["docker", "tag", tag, f"sandboxer/{name}:latest"])
    return {"image": tag, "target": target}
