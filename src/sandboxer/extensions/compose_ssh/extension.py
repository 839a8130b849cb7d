"""ComposeSSHExtension: one compose project per sandbox (docs/extensions/compose-ssh.md)."""

from __future__ import annotations

import asyncio
import json
import secrets as secrets_random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, SecretStr
from typing_extensions import override

from sandboxer import envvars
from sandboxer.config import Settings
from sandboxer.errors import DestroyFailed, InvalidInput, ProvisionFailed
from sandboxer.extensions import _keys
from sandboxer.extensions._ssh import SSHExtension
from sandboxer.extensions.base import (
    LABEL,
    BuildsImages,
    Endpoint,
    Handle,
    ManagesTargets,
    Observed,
    ProvisionRequest,
    Target,
    key_paths,
)
from sandboxer.extensions.compose_ssh import override as ov
from sandboxer.extensions.compose_ssh import policy, ready, restarts, tool
from sandboxer.extensions.compose_ssh import secrets as cs
from sandboxer.extensions.compose_ssh import snapshots as snaps
from sandboxer.extensions.compose_ssh.config import LOCAL, target_config
from sandboxer.extensions.compose_ssh.config import TargetConfig as ComposeTarget
from sandboxer.extensions.compose_ssh.lifecycle import Lifecycle
from sandboxer.extensions.compose_ssh.remote import (
    LocalRunner,
    Runner,
    SSHRunner,
    local_env,
    tar_stream,
)
from sandboxer.extensions.compose_ssh.spec import ComposeSpec
from sandboxer.values import SANDBOX_ID

if TYPE_CHECKING:
    from sandboxer.models.profile import Profile
    from sandboxer.models.target import TargetRecord

# Where the main service's SSH port is pinned on the target: below Linux's ephemeral range
# (32768+), so outgoing connections rarely hold one; a taken one is replaced.
PORT_RANGE = (20000, 32000)
PORT_ATTEMPTS = 5
_IMAGE_MISSING = ("pull access denied", "No such image", "manifest unknown",
                  "failed to resolve reference", "repository does not exist",
                  "not found: manifest", "no such host", "toomanyrequests",
                  "image not found")


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


class ComposeSSHExtension(SSHExtension, BuildsImages, ManagesTargets, Lifecycle,
                          snaps.Snapshotting):
    """ext.compose-ssh: a compose project `sbx-…` whose main service runs sshd; stops,
    starts, pauses, binds and reports activity (``lifecycle``); snapshots (``snapshots``)."""

    name = "ext.compose-ssh"
    Spec = ComposeSpec
    TargetConfig = ComposeTarget
    url_schemes = ("ssh",)

    def _configs(self) -> list[ComposeTarget]:
        """The targets added with `sandboxer targets add` (not the implicit local)."""
        return [target_config(rec) for rec in self.host.targets()]

    def _config(self, name: str) -> ComposeTarget | None:
        if name == LOCAL:
            return None
        return next((c for c in self._configs() if c.name == name), None)

    # -- images -----------------------------------------------------------------------

    @override
    async def build_for_profile(self, profile: Profile, source: Path, *, target: str,
                                variables: dict[str, str], force: bool,
                                progress: Callable[[str], None]) -> dict[str, Any]:
        from sandboxer.extensions.compose_ssh import images

        spec = self.parse_spec(profile)
        assert isinstance(spec, ComposeSpec)  # noqa: S101 - parse_spec made it
        doc = ov.load(spec, source, f"profile {profile.id}")
        return await images.build_for(self, profile.id, doc, target, progress)

    @override
    def claims_image(self, name: str) -> bool:
        from sandboxer.extensions.compose_ssh import images

        return images.claims(self.settings, name)

    @override
    def buildable_images(self) -> list[str]:
        from sandboxer.extensions.compose_ssh import images

        return [images.described(self.settings)]

    @override
    async def build_image(self, name: str, *, target: str, variables: dict[str, str],
                          force: bool, progress: Callable[[str], None],
                          confined: bool = False) -> dict[str, Any]:
        from sandboxer.extensions.compose_ssh import images

        return await images.build_recipe(self, name, target, progress)

    # -- targets ----------------------------------------------------------------------

    @override
    def targets(self, config: Settings) -> list[Target]:
        local = Target(name=LOCAL, extension=self.name,
                       capacity=envvars.compose_local_capacity(config.env),
                       used=self.host.live_count(LOCAL))
        return [local, *(
            Target(name=t.name, extension=self.name, kind=t.kind, capacity=t.capacity,
                   used=self.host.live_count(t.name), labels=t.labels)
            for t in self._configs()
        )]

    @override
    def target_summaries(self) -> list[dict[str, Any]]:
        from sandboxer.extensions.compose_ssh import targets

        return [targets.local_summary(self.settings), *map(targets.summary, self._configs())]

    @override
    async def add_target(self, name: str, url: str, options: dict[str, Any],
                         confirm: Callable[[str], bool] | None
                         ) -> tuple[TargetRecord, dict[str, Any]]:
        from sandboxer.extensions.compose_ssh import targets

        return await targets.add_target(self, name, url, options, confirm)

    @override
    async def check_targets(self, name: str | None = None) -> list[dict[str, Any]]:
        from sandboxer.extensions.compose_ssh import targets

        return await targets.check_targets(self, name)

    @override
    def removable(self, name: str) -> None:
        if name == LOCAL:
            raise InvalidInput("the local target is implicit and cannot be removed")

    @override
    async def runner(self, target: str) -> Runner:
        """A runner for one target: this machine's engine, or one SSH connection."""
        if target == LOCAL:
            return LocalRunner(str(self.settings.home / "compose"), local_env(self.settings.env))
        cfg = self._config(target)
        if cfg is None:
            raise ProvisionFailed(f"target {target!r} is not configured",
                                  hint="see `sandboxer targets list`")
        runner = await SSHRunner.connect(cfg)
        runner.base_dir = f".sandboxer/{self.settings.instance}"
        return runner

    async def compose_command(self, r: Runner) -> list[str]:
        """The argv that runs compose on ``r``'s target (``tool.of``: remembered for the
        life of this process, a probe then the creates that follow)."""
        return (await tool.of(r)).argv

    async def facts(self, r: Runner) -> dict[str, Any]:
        """Engine version and compose flavour, or ProvisionFailed saying what is missing."""
        engine, compose = await asyncio.gather(r.docker_version(), tool.of(r),
                                               return_exceptions=True)
        assert not isinstance(engine, BaseException)  # noqa: S101 - it never raises
        if engine.rc != 0:
            raise ProvisionFailed(f"no docker engine answers on target {r.name}: "
                                  f"{engine.tail(2)}")
        if isinstance(compose, BaseException):
            raise compose
        return {"engine": engine.out.strip(), **compose.facts()}

    @override
    async def probe(self, target: Target) -> Target:
        try:
            async with await self.runner(target.name) as r:
                await asyncio.wait_for(self.facts(r), 30)
        except (ProvisionFailed, TimeoutError) as e:
            reason = e.message if isinstance(e, ProvisionFailed) else "timed out"
            return target.model_copy(update={"healthy": False, "reason": reason})
        return target.model_copy(update={"healthy": True, "reason": None})

    @override
    def check(self, profile: Profile, spec: BaseModel, target: Target,
              source: Path | None) -> None:
        assert isinstance(spec, ComposeSpec)  # noqa: S101 - parse_spec made it
        doc = ov.load(spec, source, f"profile {profile.id}")
        ov.check(doc, self._allow(target.name), f"profile {profile.id}", target.name)

    def _allow(self, target: str) -> list[str]:
        cfg = self._config(target)
        return cfg.allow if cfg else [
            a for a in self.settings.env.get("SANDBOXER_COMPOSE_LOCAL_ALLOW", "").split(",") if a
        ]

    # -- lifecycle --------------------------------------------------------------------

    def _where(self, target: str) -> tuple[str, str]:
        """(address the SSH port is published on, address consumers connect to)."""
        cfg = self._config(target)
        host = "127.0.0.1" if cfg is None else cfg.endpoint_host
        return ("127.0.0.1" if _is_loopback(host) else "0.0.0.0", host)  # noqa: S104

    @override
    async def provision(self, req: ProvisionRequest, secrets: Mapping[str, SecretStr]) -> Handle:
        spec = req.spec
        assert isinstance(spec, ComposeSpec)  # noqa: S101 - parse_spec made it
        sid, target = req.sandbox_id, req.target.name
        doc = ov.load(spec, req.source, f"profile {req.profile.id}")
        image = (snaps.check_artifact(req.snapshot, self.name, req.user)
                 if req.snapshot is not None else None)
        bind, host = self._where(target)
        keys = _keys.generate(self.settings, sid)
        req.progress(f"connecting to target {target}")
        try:
            async with await self.runner(target) as r:
                compose = await self.compose_command(r)
                d: str | None = None
                try:
                    d, port, main = await self._up(r, compose, doc, spec, req, keys, bind,
                                                   secrets)
                    made_from = (await r.image_inspect(image) or {}).get("Id") if image \
                        else None
                except BaseException:
                    tool.forget(r)  # it may be compose that failed (moved, upgraded)
                    await asyncio.shield(self._teardown(r, sid, compose, d))
                    raise
        except BaseException:
            _keys.remove(self.settings, sid)
            raise
        _keys.write_known_hosts(keys.known_hosts,
                                [_keys.known_hosts_line(host, port, keys.host_public)])
        self.host.ensure_keeper()  # its housekeeping notices the container restarting
        # Names only (the values are in the override): what a later bind replaces.
        return Handle(sandbox_id=sid, extension=self.name, target=target, data={
            "dir": d, "host": host, "port": port, "user": req.user, "compose": compose,
            "container": main, "ssh_port": spec.ssh_port, "env_names": sorted(req.env),
            "loader": self._loader(req, secrets), "service": spec.service,
            "volumes": ov.named_volumes(doc), "key_volumes": True,
            "forward": sorted(req.forward), "snapshot_image": made_from,
        })

    @staticmethod
    def _loader(req: ProvisionRequest, secrets: Mapping[str, SecretStr]) -> bool:
        """Whether sessions go through the secrets loader: a sandbox with secrets, or one
        of a profile with secret refs provisioned without them (pooled: bound at claim)."""
        return bool(secrets) or bool(req.profile.setup.secret_refs)

    async def _dir(self, r: Runner, sid: str, files: dict[str, bytes] | None = None) -> str:
        """Create the sandbox's 0700 directory (and its 0600 files) in one round trip."""
        done = await r.check(
            ["sh", "-c", 'umask 077 && mkdir -p "$1" && cd "$1" && tar -x -o -f - && pwd',
             "sh", f"{r.base_dir}/{sid}"], input=tar_stream(
                (name, data, 0o600) for name, data in (files or {}).items()),
            what="creating the sandbox directory")
        return done.out.strip()

    async def _up(self, r: Runner, compose: list[str], doc: dict[str, Any],
                  spec: ComposeSpec, req: ProvisionRequest, keys: _keys.SandboxKeys,
                  bind: str, secrets: Mapping[str, SecretStr]) -> tuple[str, int, str]:
        """Write the directory, check, `up`; returns (the directory, the SSH port, the
        main container)."""
        sid = req.sandbox_id
        d = ""
        # A pinned host port, so a restarted container keeps it; another one if taken.
        for attempt in range(PORT_ATTEMPTS):
            port = PORT_RANGE[0] + secrets_random.randbelow(PORT_RANGE[1] - PORT_RANGE[0])
            override_doc = ov.build(doc, spec, sandbox_id=sid, instance=self.settings.instance,
                                    user=req.user, env=req.env, bind=bind, port=port,
                                    secrets=True)  # the tmpfs: a later bind fills it
            if req.snapshot is not None:
                snaps.from_snapshot(override_doc, spec.service, req.snapshot)
            extra = ov.dump(override_doc)
            if not d:  # one round trip for the directory and both files
                d = await self._dir(r, sid, {"compose.yaml": ov.dump(doc),
                                             "override.yaml": extra})
            else:
                await self._write(r, d, "override.yaml", extra)
            base = [*compose, "-p", sid, "--project-directory", d,
                    "-f", f"{d}/compose.yaml", "-f", f"{d}/override.yaml"]
            await self._check_resolved(r, compose, base, doc, spec, req, bind, port)
            if req.snapshot is not None:  # (again after a `down -v` below)
                await snaps.restore(r, req.snapshot, sid, self.settings.instance,
                                    ov.named_volumes(doc), req.progress)
            req.progress(f"{sid}: starting containers")
            up = [*base, "up", "-d"]
            if spec.wait and tool.is_v2(compose):  # other services' healthchecks
                up += ["--wait", "--wait-timeout", str(spec.wait_timeout)]
            started = await r.run(up, timeout=spec.wait_timeout + 30)
            if started.rc == 0:
                break
            tail = started.tail()
            if str(port) not in tail or attempt == PORT_ATTEMPTS - 1:
                raise self._explain(r, tail, req.profile.id, doc)
            await r.run([*base, "down", "-v", "--remove-orphans", "-t", "5"], timeout=120)
        ids = [tool.container_name(doc, spec.service, sid, compose)]
        if self._loader(req, secrets):
            await cs.install_loader(r, ids[0])
        # The entrypoint waits for these (SANDBOXER_KEYS_WAIT). They land in the container's
        # writable layer (so a restart keeps them), removed with the container.
        tarball = ready.key_tarball(keys.host_key.read_bytes(), keys.client_public,
                                    req.forward)
        await r.copy_in(ids[0], tarball, "installing the sandbox's SSH keys")
        if secrets:  # values only now, into the running container's tmpfs, over stdin
            req.progress(f"{sid}: injecting {len(secrets)} secret(s)")
            await cs.fill(r, ids[0], secrets, req.user, ssh_port=spec.ssh_port)
        info = await r.inspect(ids[0])
        restarts.record(self.settings, sid, str(((info or {}).get("State") or {})
                                                .get("StartedAt")))
        return d, port, ids[0]

    async def _write(self, r: Runner, d: str, name: str, data: bytes) -> None:
        await r.check(["sh", "-c", 'umask 077 && cd "$1" && tar -x -o -f -', "sh", d],
                      input=tar_stream([(name, data, 0o600)]), what=f"writing {name}")

    async def _check_resolved(self, r: Runner, compose: list[str], base: list[str],
                              doc: dict[str, Any], spec: ComposeSpec, req: ProvisionRequest,
                              bind: str, port: int) -> None:
        """Refuse what the target's allow-list does not permit in the document compose will
        really run: `compose config`, interpolated on the target, override merged."""
        v2 = tool.is_v2(compose)
        done = await r.run([*base, "config", *(["--format", "json"] if v2 else [])],
                           timeout=60)
        if done.rc != 0:
            raise InvalidInput(f"profile {req.profile.id}: `compose config` refused it on "
                               f"target {r.name}: {done.tail()}")
        try:
            cfg = json.loads(done.out) if v2 else yaml.safe_load(done.out)
        except ValueError as e:
            raise ProvisionFailed(f"unexpected `compose config` output on {r.name}") from e
        found = policy.resolved_violations(
            cfg, project=req.sandbox_id, main=spec.service, caps=ov.SSHD_CAPS,
            own=ov.own(spec, bind, port))
        ov.check(doc, self._allow(r.name), f"profile {req.profile.id} (as compose resolves "
                 f"it on the target)", r.name, found)
        if req.forward:
            policy.check_forward(cfg, spec.service, f"profile {req.profile.id}")

    @staticmethod
    def _explain(r: Runner, tail: str, profile_id: str, doc: dict[str, Any]) -> ProvisionFailed:
        if any(s in tail for s in _IMAGE_MISSING):
            from sandboxer.extensions.compose_ssh.images import images_of

            needed = ", ".join(images_of(doc)) or "its images"
            return ProvisionFailed(
                f"an image of {profile_id} ({needed}) is not on target {r.name}: {tail}",
                hint=f"build what it needs there: `sandboxer images build {profile_id} "
                f"--target {r.name}`")
        if "port is already allocated" in tail or "address already in use" in tail:
            return ProvisionFailed(f"a port the compose file publishes is taken on target "
                                   f"{r.name}: {tail}")
        return ProvisionFailed(f"docker compose failed on target {r.name}: {tail}")

    async def _teardown(self, r: Runner, sid: str, compose: list[str] | None,
                        d: str | None, image: str | None = None) -> None:
        """Remove the project, anything else labelled with its id, its directory, and the
        image of the snapshot it was made from once nothing uses it (deleted meanwhile)."""
        if compose:
            await r.run([*compose, "-p", sid, "down", "-v", "--remove-orphans", "-t", "5"],
                        timeout=120)
        sweeps = (("containers", ["docker", "rm", "-f", "-v"]),
                  ("networks", ["docker", "network", "rm"]),
                  ("volumes", ["docker", "volume", "rm", "-f"]))
        found = await asyncio.gather(*(r.labelled(kind, f"{LABEL}={sid}")
                                       for kind, _ in sweeps))
        for (_, rm), left in zip(sweeps, found, strict=True):  # containers first
            if left:
                await r.check([*rm, *left], timeout=120, what=f"removing leftovers of {sid}")
        await r.check(["rm", "-rf", "--", d or f"{r.base_dir}/{sid}"],
                      what="removing the sandbox directory")
        if image and image.startswith("sha256:"):
            # Refused (and fine) while it is still tagged or another container uses it.
            await r.run(["docker", "image", "rm", "--", image], timeout=120)

    @override
    async def wait_ready(self, handle: Handle, timeout: float) -> None:
        """sshd's banner first (``ready.banner``), then the SSH command that proves it."""
        deadline = time.monotonic() + timeout
        await ready.banner(handle.data["host"], handle.data["port"], deadline)
        await super().wait_ready(handle, max(5.0, deadline - time.monotonic()))

    @override
    async def endpoint(self, handle: Handle) -> Endpoint:
        paths = key_paths(self.settings, handle.sandbox_id)
        return Endpoint(host=handle.data["host"], port=handle.data["port"],
                        user=handle.data["user"], host_key=_keys.public_of(paths["host_key"]),
                        identity_file=str(paths["identity"]),
                        known_hosts_file=str(paths["known_hosts"]))

    @override
    async def inspect(self, handle: Handle) -> Observed:
        async with await self.runner(handle.target or LOCAL) as r:
            running = await r.labelled("containers", f"{LABEL}={handle.sandbox_id}",
                                       running_only=True)
        if running:
            return Observed(live=True)
        return Observed(live=False, detail="no running container carries its label")

    @override
    async def destroy(self, handle: Handle) -> None:
        sid = handle.sandbox_id
        if not SANDBOX_ID.fullmatch(sid):
            raise DestroyFailed(f"refusing to destroy {sid!r}: not a sandbox id")
        target = handle.target or LOCAL
        try:
            async with await self.runner(target) as r:
                compose: list[str] | None = handle.data.get("compose")
                if compose is None:
                    try:
                        compose = await self.compose_command(r)
                    except ProvisionFailed:
                        compose = None  # labels still find everything
                await self._teardown(r, sid, compose, handle.data.get("dir"),
                                     handle.data.get("snapshot_image"))
        except ProvisionFailed as e:
            raise DestroyFailed(f"cannot destroy {sid} on target {target}: {e.message}") from e
        _keys.remove(self.settings, sid)
        restarts.forget(self.settings, sid)

    @override
    async def owned(self, target: Target) -> list[Handle]:
        mine = f"label={ov.INSTANCE_LABEL}={self.settings.instance}"
        fmt = f'{{{{.Label "{LABEL}"}}}}'
        ids: set[str] = set()
        async with await self.runner(target.name) as r:
            for ls in (["docker", "ps", "-a"], ["docker", "network", "ls"],
                       ["docker", "volume", "ls"]):
                ids |= set((await r.run([*ls, "--filter", mine, "--format", fmt])).out.split())
            listed = await r.run(["ls", "-1", "--", r.base_dir])
            ids |= {n for n in listed.out.split() if SANDBOX_ID.fullmatch(n)}
        return [Handle(sandbox_id=i, extension=self.name, target=target.name)
                for i in sorted(i for i in ids if SANDBOX_ID.fullmatch(i))]
