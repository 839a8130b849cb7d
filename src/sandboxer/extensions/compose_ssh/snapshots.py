"""Snapshots of a compose sandbox: `docker commit` of the main service plus a copy of each
of the project's named volumes (docs/extensions/compose-ssh.md#snapshots).

* **What is recorded.** The main container's own filesystem as an image
  ``sandboxer-snapshot:<snapshot id>`` (``docker commit``), and every named volume of the
  profile's compose document copied to a volume ``<snapshot id>_<key>``. Both carry
  ``sandboxer.snapshot=<id>`` and ``sandboxer.instance``, never ``sandboxer.id`` (a
  destroy of the sandbox sweeps by that label and must leave its snapshots alone).
* **No secret in it.** Secrets live in the /run/secrets tmpfs, and the SSH keys in the
  project's key volumes (``override.KEY_VOLUMES``): commit leaves every mount out. The
  image's configuration is the container's, with what provision added reset: each label
  and environment variable the container has beyond its image is blanked (or its
  image's value restored), so neither the sandbox's setup env nor its ids travel.
* **Consistent.** Every running container of the project is paused while the image is
  committed and the volumes copied (``docker pause``; a paused or stopped sandbox is
  already still), then those that were running are unpaused: the sandbox stays in its
  state.
* **The copies** run in a helper container from the new image (no network, capabilities
  only to read and keep owners and modes, ``sandboxer.snapshot-helper``), which also
  measures each volume and hashes it (``tar --sort=name`` through sha256sum). The
  content hash is the sha256 of the image id and those hashes.
* **Provision from one** (``ProvisionRequest.snapshot``): the main service runs the
  snapshot's image (``pull_policy: never``) and each named volume of the new project is
  created before ``up`` and filled from the snapshot's copy, so the new sandbox shares
  nothing writable with the snapshot. Deleting the snapshot untags its image: a
  container made from it keeps the layers it runs on, and its destroy removes the image
  once nothing else uses it.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from typing_extensions import override

from sandboxer.errors import InvalidInput, ProvisionFailed, SandboxerError
from sandboxer.extensions.base import LABEL, Handle, SnapshotArtifact, Snapshots, Target
from sandboxer.extensions.compose_ssh import override as ov
from sandboxer.extensions.compose_ssh.config import LOCAL
from sandboxer.extensions.compose_ssh.remote import Runner
from sandboxer.values import SANDBOX_ID, SNAPSHOT_ID

if TYPE_CHECKING:
    from sandboxer.config import Settings

SNAPSHOT_LABEL = "sandboxer.snapshot"
HELPER_LABEL = "sandboxer.snapshot-helper"
IMAGE_REPO = "sandboxer-snapshot"
_VOLUME_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Copy /from/I into /to/I for each index I given, keeping owners, modes, times, links and
# xattrs; print "I BYTES SHA256" for each copy. GNU tar's --sort=name makes the hash
# depend on the content only.
_COPY = r"""set -eu
for i in "$@"; do
    cp -a "/from/$i/." "/to/$i/"
    size=$(du -sb "/to/$i" | cut -f1)
    hash=$(cd "/to/$i" && tar --sort=name --numeric-owner -cf - . | sha256sum | cut -d' ' -f1)
    echo "$i $size $hash"
done
"""
# What the helper needs to read every file and write it back with its owner and mode.
_HELPER_CAPS = ("CHOWN", "DAC_OVERRIDE", "DAC_READ_SEARCH", "FOWNER", "FSETID")


def image_tag(snapshot_id: str) -> str:
    return f"{IMAGE_REPO}:{snapshot_id}"


def volume_name(snapshot_id: str, key: str) -> str:
    return f"{snapshot_id}_{key}"


def _quoted(word: str) -> str:
    """A word for a Dockerfile instruction (``docker commit --change``): double-quoted,
    nothing in it interpolated."""
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def config_changes(container: dict[str, Any], image: dict[str, Any], snapshot_id: str,
                   instance: str) -> list[str]:
    """``--change`` instructions that give the committed image its own image's labels and
    environment back (what provision added blanked, what it changed restored), plus the
    snapshot's labels."""
    def pairs(kind: str, cfg: dict[str, Any]) -> dict[str, str]:
        if kind == "Labels":
            return {str(k): str(v) for k, v in (cfg.get("Labels") or {}).items()}
        return dict(str(e).partition("=")[::2] for e in cfg.get("Env") or [])

    cc, ic = container.get("Config") or {}, image.get("Config") or {}
    labels = {k: pairs("Labels", ic).get(k, "") for k, v in pairs("Labels", cc).items()
              if pairs("Labels", ic).get(k) != v and "\n" not in k}
    labels |= {SNAPSHOT_LABEL: snapshot_id, ov.INSTANCE_LABEL: instance}
    env = {k: pairs("Env", ic).get(k, "") for k, v in pairs("Env", cc).items()
           if pairs("Env", ic).get(k) != v and _ENV_NAME.fullmatch(k)}
    out = ["LABEL " + " ".join(f"{_quoted(k)}={_quoted(v)}" for k, v in sorted(labels.items()))]
    if env:
        out.append("ENV " + " ".join(f"{k}={_quoted(v)}" for k, v in sorted(env.items())))
    return out


def content_hash(image_id: str, volumes: dict[str, str]) -> str:
    text = f"image {image_id}\n" + "".join(f"volume {k} {volumes[k]}\n" for k in sorted(volumes))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


async def _helper(r: Runner, image: str, labels: dict[str, str],
                  pairs: list[tuple[str, str]], *, read_only: bool, what: str
                  ) -> dict[int, tuple[int, str]]:
    """Run ``_COPY`` over (source volume, destination volume) pairs in a throwaway
    container; {index: (bytes, sha256)}."""
    argv = ["docker", "run", "--rm", "--network", "none", "--user", "0",
            "--security-opt", "no-new-privileges:true", "--cap-drop", "ALL",
            *(a for c in _HELPER_CAPS for a in ("--cap-add", c)),
            "--pids-limit", "256", "--entrypoint", "/bin/sh",
            *(a for k, v in labels.items() for a in ("--label", f"{k}={v}"))]
    for i, (src, dst) in enumerate(pairs):
        argv += ["--mount", f"type=volume,source={src},target=/from/{i}"
                 + (",readonly" if read_only else ""),
                 "--mount", f"type=volume,source={dst},target=/to/{i}"]
    done = await r.check([*argv, "--", image, "-c", _COPY, "sh",
                          *(str(i) for i in range(len(pairs)))], timeout=3600, what=what)
    found: dict[int, tuple[int, str]] = {}
    for line in done.out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit():
            found[int(parts[0])] = (int(parts[1]), parts[2])
    if set(found) != set(range(len(pairs))):
        raise ProvisionFailed(f"{what} on target {r.name} printed no size and hash for "
                              f"every volume: {done.tail(3)}")
    return found


async def _sweep(r: Runner, snapshot_id: str) -> None:
    """Remove everything of one snapshot on ``r``'s target: helpers, image, volumes."""
    label = f"{SNAPSHOT_LABEL}={snapshot_id}"
    helper = set(await r.labelled("containers", f"{HELPER_LABEL}=1"))
    helpers = [c for c in await r.labelled("containers", label) if c in helper]
    if helpers:
        await r.check(["docker", "rm", "-f", "-v", "--", *helpers], timeout=120,
                      what=f"removing the copy helpers of {snapshot_id}")
    # -f on the tag: untag; a container made from it keeps running on its layers.
    done = await r.run(["docker", "image", "rm", "-f", "--", image_tag(snapshot_id)],
                       timeout=120)
    if done.rc != 0 and "No such image" not in done.err:
        raise ProvisionFailed(f"removing the image of {snapshot_id} failed on target "
                              f"{r.name}: {done.tail(3)}")
    volumes = await r.labelled("volumes", label)
    if volumes:
        await r.check(["docker", "volume", "rm", "-f", "--", *volumes], timeout=120,
                      what=f"removing the volumes of {snapshot_id}")


class Snapshotting(Snapshots):
    """The ``Snapshots`` capability of ``ComposeSSHExtension`` (a mixin of it)."""

    if TYPE_CHECKING:
        name: ClassVar[str]
        settings: Settings

    @abstractmethod
    async def runner(self, target: str) -> Runner:
        """A runner for one target (``ComposeSSHExtension.runner``)."""

    @abstractmethod
    async def main_container(self, r: Runner, handle: Handle) -> str:
        """The main service's container (``Lifecycle.main_container``)."""

    @override
    def snapshottable(self, handle: Handle) -> str | None:
        if not handle.data.get("key_volumes") or "volumes" not in handle.data:
            return (f"{handle.sandbox_id} was created by a sand-boxer that kept its SSH keys "
                    "in the container's own filesystem, which a snapshot would record; "
                    "create it again to snapshot it")
        return None

    @override
    async def snapshot(self, handle: Handle, snapshot_id: str,
                       progress: Callable[[str], None]) -> SnapshotArtifact:
        if not SNAPSHOT_ID.fullmatch(snapshot_id) or not SANDBOX_ID.fullmatch(
                handle.sandbox_id):
            raise InvalidInput(f"not a snapshot id and a sandbox id: {snapshot_id!r}, "
                               f"{handle.sandbox_id!r}")
        why = self.snapshottable(handle)
        if why:
            raise InvalidInput(f"ext.compose-ssh cannot snapshot it: {why}")
        target = handle.target or LOCAL
        async with await self.runner(target) as r:
            try:
                return await self._snapshot(r, handle, snapshot_id, progress)
            except BaseException:
                await asyncio.shield(_sweep(r, snapshot_id))
                raise

    async def _snapshot(self, r: Runner, handle: Handle, snapshot_id: str,
                        progress: Callable[[str], None]) -> SnapshotArtifact:
        sid, tag = handle.sandbox_id, image_tag(snapshot_id)
        main = await self.main_container(r, handle)
        containers = await r.labelled("containers", f"{LABEL}={sid}", running_only=True)
        infos = {c: await r.inspect(c) or {} for c in containers}
        running = [c for c, i in infos.items() if not (i.get("State") or {}).get("Paused")]
        info = infos.get(main) or await r.inspect(main)
        if info is None:
            raise ProvisionFailed(f"the main container {main} of {sid} is gone from "
                                  f"target {r.name}")
        base = await r.image_inspect(str(info.get("Image")))
        labels = {SNAPSHOT_LABEL: snapshot_id, ov.INSTANCE_LABEL: self.settings.instance}
        keys = [k for k in handle.data.get("volumes") or [] if _VOLUME_KEY.fullmatch(k)]
        progress(f"{sid}: pausing {len(running)} container(s) for snapshot {snapshot_id}")
        await r.pause(running, paused=True)
        try:
            changes = config_changes(info, base or {}, snapshot_id, self.settings.instance)
            await r.check(["docker", "commit", "--pause=false",
                           *(a for c in changes for a in ("--change", c)), "--", main, tag],
                          timeout=3600, what=f"docker commit of {sid}")
            for key in keys:
                await r.check(["docker", "volume", "create",
                               *(a for k, v in labels.items() for a in ("--label", f"{k}={v}")),
                               "--", volume_name(snapshot_id, key)],
                              what=f"creating a snapshot volume of {sid}")
            copied: dict[int, tuple[int, str]] = {}
            if keys:
                progress(f"{sid}: copying {len(keys)} volume(s) for snapshot {snapshot_id}")
                copied = await _helper(
                    r, tag, {**labels, HELPER_LABEL: "1"},
                    [(f"{sid}_{k}", volume_name(snapshot_id, k)) for k in keys],
                    read_only=True, what=f"copying the volumes of {sid}")
        finally:  # what was running runs again, whatever happened
            await asyncio.shield(r.pause(running, paused=False))
        image = await r.image_inspect(tag) or {}
        own = int(image.get("Size") or 0) - int((base or {}).get("Size") or 0)
        hashes = {k: copied[i][1] for i, k in enumerate(keys)}
        return SnapshotArtifact(
            snapshot_id=snapshot_id, extension=self.name, target=r.name,
            size_bytes=max(own, 0) + sum(s for s, _ in copied.values()),
            content_hash=content_hash(str(image.get("Id")), hashes),
            data={"image": tag, "image_id": image.get("Id"), "source": sid,
                  "service": handle.data.get("service"), "user": handle.data.get("user"),
                  "volumes": {k: volume_name(snapshot_id, k) for k in keys},
                  "volume_hashes": hashes})

    @override
    async def delete_snapshot(self, artifact: SnapshotArtifact) -> None:
        if not SNAPSHOT_ID.fullmatch(artifact.snapshot_id):
            raise InvalidInput(f"refusing to delete {artifact.snapshot_id!r}: not a "
                               "snapshot id")
        async with await self.runner(artifact.target or LOCAL) as r:
            await _sweep(r, artifact.snapshot_id)

    @override
    async def owned_snapshots(self, target: Target) -> list[SnapshotArtifact]:
        mine = f"label={ov.INSTANCE_LABEL}={self.settings.instance}"
        async with await self.runner(target.name) as r:
            images = await r.run(["docker", "image", "ls", "--filter", mine, "--filter",
                                  f"label={SNAPSHOT_LABEL}", "--format",
                                  "{{.Repository}}:{{.Tag}}"], timeout=60)
            volumes = await r.run(["docker", "volume", "ls", "--filter", mine, "--filter",
                                   f"label={SNAPSHOT_LABEL}", "--format",
                                   f'{{{{.Name}}}} {{{{.Label "{SNAPSHOT_LABEL}"}}}}'],
                                  timeout=60)
        found: dict[str, dict[str, Any]] = {}
        for ref in images.out.split():
            repo, _, snap = ref.partition(":")
            if repo == IMAGE_REPO and SNAPSHOT_ID.fullmatch(snap):
                found.setdefault(snap, {"volumes": {}})["image"] = ref
        for line in volumes.out.splitlines():
            name, _, snap = line.strip().partition(" ")
            if SNAPSHOT_ID.fullmatch(snap) and name.startswith(f"{snap}_"):
                found.setdefault(snap, {"volumes": {}})["volumes"][
                    name.removeprefix(f"{snap}_")] = name
        return [SnapshotArtifact(snapshot_id=s, extension=self.name, target=target.name,
                                 data=d) for s, d in sorted(found.items())]


def check_artifact(artifact: SnapshotArtifact, extension: str, user: str) -> str:
    """The snapshot's image, or InvalidInput saying why a sandbox cannot start from it."""
    image = artifact.data.get("image")
    if artifact.extension != extension or not isinstance(image, str) \
            or not image.startswith(f"{IMAGE_REPO}:"):
        raise InvalidInput(f"snapshot {artifact.snapshot_id} was not made by {extension}")
    if artifact.data.get("user") not in (None, user):
        raise InvalidInput(
            f"snapshot {artifact.snapshot_id} has the login user "
            f"{artifact.data.get('user')!r}, the profile {user!r}: the image's account is "
            "that user's", hint="create it with a profile of the same reachability.user")
    return image


def from_snapshot(extra: dict[str, Any], service: str, artifact: SnapshotArtifact) -> None:
    """The override's share of a sandbox made from a snapshot: the main service runs its
    image, never pulled, without the snapshot's label (nothing must take it for one)."""
    main = extra["services"][service]
    main["image"] = artifact.data["image"]
    main["pull_policy"] = "never"
    main["labels"][SNAPSHOT_LABEL] = ""
    main["labels"]["sandboxer.from-snapshot"] = artifact.snapshot_id


async def restore(r: Runner, artifact: SnapshotArtifact, sandbox_id: str, instance: str,
                  keys: list[str], progress: Callable[[str], None]) -> None:
    """Create the project's named volumes ``keys`` (as compose would: its labels and ours)
    and fill those the snapshot has from its copies, before ``up``."""
    have: dict[str, str] = artifact.data.get("volumes") or {}
    pairs = [(have[k], f"{sandbox_id}_{k}") for k in keys if k in have]
    if not pairs:
        return
    labels = {LABEL: sandbox_id, ov.INSTANCE_LABEL: instance,
              "com.docker.compose.project": sandbox_id}
    for k in keys:
        if k in have:
            await r.check(["docker", "volume", "create",
                           *(a for n, v in {**labels, "com.docker.compose.volume": k}.items()
                             for a in ("--label", f"{n}={v}")),
                           "--", f"{sandbox_id}_{k}"],
                          what=f"creating volume {k} of {sandbox_id}")
    progress(f"{sandbox_id}: filling {len(pairs)} volume(s) from {artifact.snapshot_id}")
    try:
        await _helper(r, str(artifact.data["image"]), {LABEL: sandbox_id, HELPER_LABEL: "1"},
                      pairs, read_only=True,
                      what=f"filling the volumes of {sandbox_id} from {artifact.snapshot_id}")
    except SandboxerError as e:
        raise ProvisionFailed(f"{e.message} (is snapshot {artifact.snapshot_id} still "
                              "there? `sandboxer snapshots show` it)") from e
