"""VMPackerExtension: one QEMU VM per sandbox on an overlay of a Packer-built image, or a
lease on an existing VM (the attach variant). See docs/extensions/vm-packer.md."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, SecretStr
from typing_extensions import override

from sandboxer import envvars
from sandboxer.config import Settings
from sandboxer.errors import DestroyFailed, InvalidInput, ProvisionFailed, SecretError
from sandboxer.extensions import _keys
from sandboxer.extensions._ssh import ssh_probe
from sandboxer.extensions.base import (
    BuildsImages,
    Handle,
    Observed,
    ProvisionRequest,
    Target,
)
from sandboxer.extensions.vm_packer import images, qemu, remote
from sandboxer.extensions.vm_packer.lifecycle import VMLifecycle
from sandboxer.extensions.vm_packer.machine import TARGET
from sandboxer.extensions.vm_packer.snapshots import VMSnapshots
from sandboxer.extensions.vm_packer.spec import VMSpec, size_bytes
from sandboxer.values import SANDBOX_ID

if TYPE_CHECKING:
    from sandboxer.models.profile import Profile

log = logging.getLogger(__name__)


class VMPackerExtension(VMLifecycle, VMSnapshots, BuildsImages):
    """ext.vm-packer: QEMU VMs from cached Packer images, or leases on existing VMs."""

    name = "ext.vm-packer"
    Spec = VMSpec

    @override
    def targets(self, config: Settings) -> list[Target]:
        return [Target(name=TARGET, extension=self.name, kind="self-hosted",
                       capacity=envvars.vm_capacity(config.env),
                       used=self.host.live_count(TARGET))]

    @override
    def check(self, profile: Any, spec: BaseModel, target: Target,
              source: Path | None) -> None:
        assert isinstance(spec, VMSpec)  # noqa: S101 - parse_spec made it
        if spec.attach is not None:
            if profile.setup.secret_refs:
                raise SecretError(
                    f"profile {profile.id}: secret_refs are not supported by the attach "
                    "variant of ext.vm-packer (the VM is not ours to hold values in)",
                    hint="inject them yourself, or use a VM booted from a Packer image")
            if profile.reachability.forward:
                raise InvalidInput(f"profile {profile.id}: reachability.forward is not "
                                   "supported by the attach variant of ext.vm-packer (the "
                                   "VM's sshd is its own to configure)",
                                   hint="remove reachability.forward, or use a VM booted "
                                   "from a Packer image")
            ident = Path(spec.attach.identity).expanduser()
            if not ident.is_file():
                raise InvalidInput(f"profile {profile.id}: spec.attach.identity {ident} "
                                   "is not a file")
            return
        assert spec.packer is not None  # noqa: S101 - the model requires one of the two
        tpl = images.Template.load(images.resolve_template(self.settings,
                                                            spec.packer.template, source))
        tpl.check_vars(spec.packer.vars)

    @override
    async def build_for_profile(self, profile: Profile, source: Path, *, target: str,
                                variables: dict[str, str], force: bool,
                                progress: Callable[[str], None]) -> dict[str, Any]:
        from sandboxer.extensions.vm_packer import build

        return await build.build_profile(self, profile, source, variables=variables,
                                         force=force, progress=progress)

    @override
    def claims_image(self, name: str) -> bool:
        from sandboxer.extensions.vm_packer import build

        return build.is_template_name(name)

    @override
    def buildable_images(self) -> list[str]:
        from sandboxer.extensions.vm_packer import build

        return [build.DESCRIBED]

    @override
    async def build_image(self, name: str, *, target: str, variables: dict[str, str],
                          force: bool, progress: Callable[[str], None],
                          confined: bool = False) -> dict[str, Any]:
        from sandboxer.extensions.vm_packer import build

        return await build.build_template(self.settings, name, variables=variables,
                                          force=force, progress=progress, confined=confined)

    # -- provision ----------------------------------------------------------------------

    @override
    async def provision(self, req: ProvisionRequest, secrets: Mapping[str, SecretStr]) -> Handle:
        spec = req.spec
        assert isinstance(spec, VMSpec)  # noqa: S101 - parse_spec made it
        sid = req.sandbox_id
        if spec.attach is not None:
            refuse_attached(req)
        d = self.sandbox_dir(sid)
        self.vm_root().mkdir(parents=True, exist_ok=True, mode=0o700)
        d.mkdir(mode=0o700)
        try:
            keys = _keys.generate(self.settings, sid)
            if spec.attach is not None:
                data = await self._attach(req, spec, keys)
            else:
                data = await self._boot(req, spec, keys, secrets)
        except BaseException as cause:
            # The cause is what the caller must see; a failing cleanup only adds to it.
            try:
                await asyncio.shield(self.destroy(Handle(sandbox_id=sid, extension=self.name,
                                                         target=TARGET)))
            except Exception as e:
                log.warning("cleanup of %s after a failed provision also failed: %s", sid, e)
                cause.add_note(f"cleanup also failed: {e}")
            raise
        self.host.ensure_keeper()  # QEMU knows no lease: core's keeper reaps it
        self._answered.add(sid)
        return Handle(sandbox_id=sid, extension=self.name, target=TARGET, data=data)

    async def _boot(self, req: ProvisionRequest, spec: VMSpec, keys: _keys.SandboxKeys,
                    secrets: Mapping[str, SecretStr]) -> dict[str, Any]:
        assert spec.packer is not None  # noqa: S101 - the caller checked
        sid, d = req.sandbox_id, self.sandbox_dir(req.sandbox_id)
        qemu_bin = self._qemu_bin()
        if req.snapshot is not None:  # its disk is an overlay of that image, no other
            image = self.snapshot_image(req.snapshot)
            req.progress(f"{sid}: from snapshot {req.snapshot.snapshot_id} (image "
                         f"{image.name})")
        else:
            template = images.resolve_template(self.settings, spec.packer.template,
                                               req.source)
            image, built = await images.build(self.settings, template, spec.packer.vars,
                                              accel=spec.vm.accel, progress=req.progress)
            req.progress(f"{sid}: image {image.name} ({'built' if built else 'cached'})")
        accel, why = await asyncio.to_thread(qemu.choose_accel, self.settings, spec.vm.accel,
                                             qemu_bin, image / "vmlinuz")
        req.progress(f"{sid}: accelerator {accel} ({why})")
        user = spec.ssh.user or req.user
        bindable = bool(secrets or req.env or req.profile.setup.secret_refs)
        # Everything start needs to boot it again; a guest with a binding (env, secrets,
        # or refs a claim fills later) gets a tmpfs for it and the session wrapper.
        record = {"kind": "boot", "image": str(image), "user": user, "accel": accel,
                  "cpus": spec.vm.cpus, "memory_mib": spec.vm.memory_mib,
                  "network": spec.network, "boot_timeout": spec.vm.boot_timeout,
                  "bindable": bindable, "forward": list(req.forward)}
        self._write_record(sid, record)
        overlay = d / "overlay.qcow2"
        grow = size_bytes(spec.vm.disk) if spec.vm.disk else None
        if req.snapshot is not None:
            await self.overlay_from(req.snapshot, overlay, grow)
        else:
            await self._check(qemu.overlay_argv(image / "disk.qcow2", overlay, grow),
                              "creating the overlay")
        await asyncio.to_thread(
            qemu.make_config_drive, d / "config.img", user=user, hostname=sid,
            authorized_keys=keys.client_public + "\n",
            host_key=keys.host_key.read_bytes(), secrets=bindable, forward=req.forward)
        port = await self._start(qemu_bin, sid, image, cpus=spec.vm.cpus,
                                 memory_mib=spec.vm.memory_mib, accel=accel,
                                 network=spec.network)
        self._write_record(sid, {**record, "port": port})
        _keys.write_known_hosts(keys.known_hosts,
                                [_keys.known_hosts_line("127.0.0.1", port, keys.host_public)])
        data = {"kind": "boot", "host": "127.0.0.1", "port": port, "user": user,
                "image": image.name, "accel": accel}
        req.progress(f"{sid}: booting ({accel}); SSH within {spec.vm.boot_timeout}s")
        ep = self._endpoint(sid, data, keys.host_public)
        await self._await_boot(ep, sid, spec.vm.boot_timeout)
        if bindable:
            req.progress(f"{sid}: binding {len(req.env)} variable(s), "
                         f"{len(secrets)} secret(s)")
            await remote.bind(ep, req.env, secrets)
        return data

    async def _attach(self, req: ProvisionRequest, spec: VMSpec,
                      keys: _keys.SandboxKeys) -> dict[str, Any]:
        a = spec.attach
        assert a is not None  # noqa: S101 - the caller checked
        sid = req.sandbox_id
        identity = str(Path(a.identity).expanduser())
        record = {"kind": "attach", "host": a.host, "port": a.port, "user": a.user,
                  "host_key": a.host_key, "identity": identity, "key": "unknown"}
        # "key" says whether destroy has a line to remove: "unknown" while the install may
        # be under way, "absent" once the VM refused it, "installed" once it is there.
        self._write_record(sid, record)
        admin_known = self.sandbox_dir(sid) / "admin.known_hosts"
        _keys.write_known_hosts(admin_known, [_keys.known_hosts_line(a.host, a.port,
                                                                     a.host_key)])
        _keys.write_known_hosts(keys.known_hosts,
                                [_keys.known_hosts_line(a.host, a.port, a.host_key)])
        keys.host_key.unlink(missing_ok=True)  # the VM's own key is pinned instead
        admin = remote.admin_endpoint(a.host, a.port, a.user, a.host_key, identity,
                                      admin_known)
        req.progress(f"{sid}: authorizing the sandbox key for {a.user}@{a.host}:{a.port}")
        rc, out = await remote.run(admin, remote.authorize_command(
            remote.key_line(keys.client_public, sid)))
        if rc == 0:
            self._write_record(sid, {**record, "key": "installed"})
        elif remote.nothing_ran(rc, out):
            self._write_record(sid, {**record, "key": "absent"})
        if rc != 0:
            raise ProvisionFailed(f"installing the sandbox key on {a.user}@{a.host}:{a.port} "
                                  f"failed: {out.strip()[-300:]}",
                                  hint="spec.attach.identity must log in as spec.attach.user")
        return {"kind": "attach", "host": a.host, "port": a.port, "user": a.user,
                "host_key": a.host_key}

    # -- reading ------------------------------------------------------------------------

    @override
    async def inspect(self, handle: Handle) -> Observed:
        if handle.data.get("kind") == "attach":
            live = self.sandbox_dir(handle.sandbox_id).is_dir()
            return Observed(live=live, detail=None if live else "no lease record")
        if self._pid(handle.sandbox_id) is not None:
            return Observed(live=True)
        if self._record(handle.sandbox_id).get("stopped") and (
                self.sandbox_dir(handle.sandbox_id) / "overlay.qcow2").is_file():
            return Observed(live=True, detail="stopped: its disk is kept")
        return Observed(live=False, detail="its QEMU process is gone")

    # -- destroy ------------------------------------------------------------------------

    @override
    async def destroy(self, handle: Handle) -> None:
        sid = handle.sandbox_id
        if not SANDBOX_ID.fullmatch(sid):
            raise DestroyFailed(f"refusing to destroy {sid!r}: not a sandbox id")
        d = self.sandbox_dir(sid)
        record = self._record(sid)
        if record.get("kind") == "attach" and record.get("key") != "absent":
            await self._release(sid, record)
        pids = {p for p in (self._pid(sid),) if p is not None}
        pids |= {p for s, p in qemu.vm_processes(str(self.vm_root()) + "/").items()
                 if s == sid}
        for pid in pids:
            await qemu.kill(pid, sid)
        shutil.rmtree(d, ignore_errors=True)
        _keys.remove(self.settings, sid)

    async def _release(self, sid: str, record: dict[str, Any]) -> None:
        """Remove exactly this sandbox's authorized_keys line; the VM keeps running."""
        admin = remote.admin_endpoint(record["host"], record["port"], record["user"],
                                      record["host_key"], record["identity"],
                                      self.sandbox_dir(sid) / "admin.known_hosts")
        rc, out = await remote.run(admin, remote.revoke_command(sid))
        if rc != 0:
            raise DestroyFailed(f"removing the key of {sid} from {record['user']}@"
                                f"{record['host']}:{record['port']} failed: "
                                f"{out.strip()[-300:]}", hint="retry; destroy is idempotent")

    @override
    async def owned(self, target: Target) -> list[Handle]:
        root = self.vm_root()
        ids = set(qemu.vm_processes(str(root) + "/"))
        if root.is_dir():
            ids |= {p.name for p in root.iterdir() if SANDBOX_ID.fullmatch(p.name)}
        return [Handle(sandbox_id=i, extension=self.name, target=TARGET) for i in sorted(ids)]

    @override
    async def wait_ready(self, handle: Handle, timeout: float) -> None:
        # provision (or start) already waited for SSH (vm.boot_timeout) in this process
        if handle.sandbox_id in self._answered and handle.data.get("kind") == "boot":
            return
        await ssh_probe(await self.endpoint(handle), timeout=max(timeout, 30.0))


def refuse_attached(req: ProvisionRequest) -> None:
    """What the attach variant cannot do at provision: start from a snapshot, limit
    forwarding (``check`` refuses the profile already; this guards a direct caller)."""
    if req.snapshot is not None:
        raise InvalidInput(f"{req.profile.id} attaches to an existing VM: it cannot start "
                           f"from snapshot {req.snapshot.snapshot_id}")
    if req.forward:
        raise InvalidInput(f"{req.profile.id} attaches to an existing VM: its sshd is its "
                           "own, sand-boxer cannot allow reachability.forward there")
