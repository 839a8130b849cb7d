"""LocalExtension: workspace directories jailed with bubblewrap, served by one daemon."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, SecretStr
from typing_extensions import override

from sandboxer import envvars
from sandboxer.config import Settings
from sandboxer.errors import (
    Conflict,
    InvalidInput,
    ProvisionFailed,
    SandboxerError,
    SandboxNotFound,
)
from sandboxer.extensions import _keys
from sandboxer.extensions._ssh import SSHExtension, ssh_probe
from sandboxer.extensions.base import (
    DoctorChecks,
    Endpoint,
    Handle,
    Host,
    Housekeeping,
    Observed,
    ProvisionRequest,
    ServesEndpoints,
    Target,
    key_paths,
)
from sandboxer.extensions.local import cgroups, control, dirs, disk, snapshots, spares, uids
from sandboxer.extensions.local.operations import LocalOperations
from sandboxer.extensions.local.snapshots import LocalSnapshots
from sandboxer.extensions.local.spec import LocalSpec
from sandboxer.models.doctor import Check

if TYPE_CHECKING:
    from sandboxer.extensions.local.endpoint import Daemon as Endpoint_

TARGET = "local"
# What this process runs and knows, shared by every instance (a request of the local
# service gets instances of its own): the endpoint it runs, by home; host keys' public
# lines (not secret), by sandbox id.
_ENDPOINTS: dict[Path, Endpoint_] = {}
_HOST_PUBLICS: dict[str, str] = {}
# (port, when) of a sandbox the endpoint has just served (provision's ``add``) or just
# answered SSH on (wait_ready's probe): the next ``endpoint()`` of this create -- the
# probe's, then the descriptor's -- need not ask it again (an ``add`` over its control
# socket when another process runs it). Each entry is used once, within a moment; every
# other call asks, and so brings back an endpoint that died.
_SERVED: dict[str, tuple[int, float]] = {}
_SERVED_FRESH = 2.0
os.register_at_fork(after_in_child=_ENDPOINTS.clear)  # a child runs none of them
UID_SPAN = uids.SPAN
_proc_uids = uids.proc_uids
_SHARED_LOCAL = "/var/lib/sandboxer/local"  # config.Settings.local_root for root homes


async def _cancel(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


class LocalExtension(SSHExtension, DoctorChecks, Housekeeping, ServesEndpoints,
                     LocalOperations, LocalSnapshots):
    """ext.local: a bwrap jail per sandbox, reached through the shared SSH endpoint.

    The endpoint is this extension's housekeeping, in core's keeper process for it.
    """

    name = "ext.local"
    Spec = LocalSpec

    def __init__(self, settings: Settings, host: Host | None = None) -> None:
        super().__init__(settings, host)
        self._disk: bool | None = None

    @override
    @classmethod
    def warm_up(cls) -> None:
        super().warm_up()
        spares.enable()

    @override
    def doctor_checks(self) -> list[Check]:
        from sandboxer.extensions.local import doctor

        return doctor.checks()

    @override
    def keeper_interval(self) -> float:
        return 1.0

    @override
    async def housekeep(self, host: Host) -> None:
        from sandboxer.extensions.local import spawnerclient

        home = self.settings.home

        def bind(running: Endpoint_ | None) -> None:
            if running is None:
                _ENDPOINTS.pop(home, None)
            else:
                _ENDPOINTS[home] = running

        try:
            # Before asyncssh loads (~70 ms): the spawner boots and the workspace image of
            # a default spec is formatted meanwhile, so the create that started this
            # process finds both ready instead of doing without the one and making the
            # other on its way.
            spares.enable()  # this process is long-lived: it keeps spares from now on
            spawnerclient.client()
            if self._images():
                spares.prefill(self.settings.local_root, LocalSpec().limits.disk_bytes)
            from sandboxer.extensions.local import endpoint  # asyncssh: only here

            type(self).warm_up()
            await endpoint.serve(self.settings, host, bind=bind)
        finally:
            # The keeper ends with its endpoint: its spares go now rather than at exit, so
            # that a per-home directory no sandbox is left in goes too (the last destroy
            # could not remove it while the spares were there).
            await asyncio.to_thread(spares.drop_all)
            self._drop_empty_root()

    @override
    async def serve_again(self, documents: list[dict[str, Any]]) -> list[str]:
        # Starting the endpoint restores every live sandbox, on its recorded port or on a
        # new one when that was taken meanwhile.
        await control.ensure_running(self.settings)
        listed = await control.request(self.settings, "list")
        served = {e["sandbox_id"]: e["port"] for e in listed["sandboxes"]}
        return [str(d["id"]) for d in documents
                if served.get(d["id"]) != (d.get("reachability") or {}).get("port")]

    @property
    def _root(self) -> bool:
        return os.geteuid() == 0

    def _dirs(self) -> list[Path]:
        root = self.settings.local_root
        if not root.is_dir():
            return []
        return [p for p in root.iterdir() if p.is_dir() and control.SANDBOX_ID.fullmatch(p.name)]

    @override
    def targets(self, config: Settings) -> list[Target]:
        bwrap = shutil.which("bwrap")
        return [Target(
            name=TARGET,
            extension=self.name,
            kind="self-hosted",
            healthy=bwrap is not None,
            reason=None if bwrap else "bubblewrap is not installed: apt-get install bubblewrap",
            capacity=envvars.local_capacity(config.env),
            used=len(LocalExtension(config)._dirs()),
        )]

    def _create_dirs(self, sandbox_id: str) -> tuple[int, Path, Path]:
        """Pick a free host uid and create the sandbox dir and its workspace (owned by it)."""
        return dirs.create(self.settings, sandbox_id, root=self._root,
                           workspace_uids=self._workspace_uids)

    def _workspace_uids(self) -> set[int]:
        """The host uids of this home's workspaces (older ones may have no claim)."""
        taken = set()
        for other in self._dirs():
            with contextlib.suppress(OSError):
                taken.add((other / "workspace").stat().st_uid)
        return taken

    @override
    async def provision(self, req: ProvisionRequest, secrets: Mapping[str, SecretStr]) -> Handle:
        s = self.settings
        sid = req.sandbox_id
        spec = req.spec if isinstance(req.spec, LocalSpec) else self._spec(req.spec)
        if req.forward and spec.network:
            raise InvalidInput(
                f"ext.local cannot forward ports of {sid}: with spec.network: true it shares "
                "the host's network and has no loopback of its own",
                hint="drop reachability.forward, or spec.network")
        source: tuple[Path, int] | None = None
        if req.snapshot is not None:
            if not self._images():
                raise InvalidInput(f"ext.local cannot create {sid} from a snapshot: "
                                   f"{disk.available() or 'it makes no workspace images'}")
            # Checked before anything is made: the snapshot's image is there and fits.
            source = snapshots.source_image(s, req.snapshot, spec.limits.disk_bytes)
        here = self._here()
        starting: asyncio.Task[None] | None = None
        if here is None:
            req.progress("starting the local endpoint")
            starting = asyncio.create_task(control.ensure_running(s))
        try:
            req.progress("creating the workspace")
            try:
                # mkdir claims the id: nothing below may touch a sandbox we did not create.
                host_uid, d, ws = self._create_dirs(sid)
            except FileExistsError as e:
                raise ProvisionFailed(f"ext.local sandbox {sid} already exists") from e
        except BaseException:
            await _cancel(starting)
            raise
        try:
            if source is not None and req.snapshot is not None:
                req.progress(f"copying the workspace of {req.snapshot.snapshot_id}")
                await asyncio.to_thread(snapshots.restore_workspace, d, ws,
                                        spec.limits.disk_bytes, host_uid, source)
            elif self._images():
                req.progress(f"making a {spec.limits.disk} workspace")
                size = spec.limits.disk_bytes
                spare = spares.take(s.local_root, size)
                if spare is not None:  # a rename and two syscalls: no thread needed
                    self._image(d, ws, size, host_uid, spare)
                else:
                    await asyncio.to_thread(self._image, d, ws, size, host_uid, None)
            req.progress("generating keys")
            keys = _keys.generate(s, sid)
            if len(_HOST_PUBLICS) > 10_000:  # sandboxes destroyed by other processes
                _HOST_PUBLICS.clear()
            _HOST_PUBLICS[sid] = keys.host_public
            if starting is not None:
                await starting
            record: dict[str, Any] = {
                "sandbox_id": sid, "user": req.user, "port": None,
                "host_key_path": str(keys.host_key), "authorized_key": keys.client_public,
                "workspace": str(ws), "host_uid": host_uid,
                "spec": spec.model_dump(mode="json"), "env": dict(req.env),
                "secret_names": sorted(secrets), "forward": sorted(req.forward),
            }
            req.progress("opening the SSH endpoint")
            # Values travel only in this request (in memory, or over the 0600 control
            # socket); the record written below (sandbox.json) names the secrets but holds
            # no value.
            values = {k: v.get_secret_value() for k, v in secrets.items()}
            port = await self._add(record, values, here, early=True)
            del values
            record["port"] = port
            if len(_SERVED) > 10_000:
                _SERVED.clear()
            _SERVED[sid] = (port, time.monotonic())
            control.record_served(s, record, port, keys.host_public)
        except BaseException as e:
            await _cancel(starting)
            await self.destroy(Handle(sandbox_id=sid, extension=self.name, target=TARGET))
            if isinstance(e, SandboxerError) or not isinstance(e, Exception):
                raise
            raise ProvisionFailed(f"ext.local: creating {sid} failed: {e}") from e
        return Handle(sandbox_id=sid, extension=self.name, target=TARGET, data={
            "port": port, "host_uid": host_uid, "dir": str(d), "workspace": str(ws),
            "user": req.user, "forward": sorted(req.forward),
        })

    @override
    def _here(self) -> Endpoint_ | None:
        """The endpoint of this home that this process runs, when it does (the local
        service, whose requests each get extension instances of their own): it is then
        called directly instead of through its control socket."""
        here = _ENDPOINTS.get(self.settings.home)
        return here if here is not None and here.accepting else None

    async def _add(self, record: dict[str, Any], secrets: dict[str, str] | None,
                   here: Endpoint_ | None, *, early: bool = False) -> int:
        """Serve a sandbox; ``early``: return once it listens, its jail still starting
        (``wait_ready`` waits for both)."""
        if here is not None:
            return await here.add_here(record, secrets, early=early)
        extra: dict[str, Any] = {} if secrets is None else {"secrets": secrets}
        if early:
            extra["early"] = True
        return int((await control.call(self.settings, "add", **record, **extra))["port"])

    @override
    async def wait_ready(self, handle: Handle, timeout: float) -> None:
        # The probe connects while the jail starts; a jail that fails ends the wait at
        # once with its error, instead of retrying SSH until the timeout.
        ep = await self.endpoint(handle)
        sid = handle.sandbox_id
        here = self._here()
        started = here.started(sid) if here is not None else control.started(self.settings, sid)
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(started)
                tg.create_task(ssh_probe(ep, timeout=timeout))
            _SERVED[sid] = (ep.port, time.monotonic())  # answered just now
        except BaseExceptionGroup as group:
            first = group.exceptions[0]
            if isinstance(first, SandboxerError):
                raise first from None
            raise ProvisionFailed(f"ext.local: the jail of {sid} did not start: {first}",
                                  hint=f"see {control.log_path(self.settings)}") from first

    @override
    def _images(self) -> bool:
        if self._disk is None:
            self._disk = self._root and disk.available() is None
        return self._disk

    def _image(self, d: Path, ws: Path, size: int, uid: int, spare: Path | None) -> None:
        """The workspace's image (``spare``, made ahead, or a new one), mounted for uid."""
        if spare is None:
            disk.create(d, size)
        else:
            try:
                disk.check_room(d, size)
                os.rename(spare, disk.image_path(d))
            except FileNotFoundError:
                # Removed meanwhile (by hand, or by a process sharing the local root that
                # took this one for a dead one): a new image, as without spares.
                disk.create(d, size)
            except BaseException:
                spare.unlink(missing_ok=True)
                raise
        disk.mount(d, ws, owner=uid)

    def _spec(self, spec: BaseModel) -> LocalSpec:
        return LocalSpec.model_validate(spec.model_dump())

    def _record(self, handle: Handle) -> dict[str, Any]:
        rec = control.read_record(self.settings, handle.sandbox_id)
        if rec is None or not rec.get("port"):
            raise SandboxNotFound(
                f"ext.local sandbox {handle.sandbox_id} has no workspace under "
                f"{self.settings.local_root}",
                hint="it was destroyed; create a new one",
            )
        return rec

    @override
    async def endpoint(self, handle: Handle) -> Endpoint:
        sid = handle.sandbox_id
        here = self._here()
        served = here.sandboxes.get(sid) if here is not None else None
        paths = key_paths(self.settings, sid)
        if served is not None and served.port:
            port, user = served.port, served.user
        else:
            rec = self._record(handle)
            if rec.get("stopped"):
                raise Conflict(f"ext.local sandbox {sid} is stopped: nothing serves it",
                               hint=f"sandboxer start {sid}")
            just = _SERVED.pop(sid, None)
            if just is not None and just[0] == rec.get("port") and \
                    time.monotonic() - just[1] < _SERVED_FRESH:
                port, user = just[0], str(rec["user"])
            else:
                # Re-serve after a daemon restart; add is idempotent, keeps the recorded port.
                port, user = await self._add(rec, None, here), str(rec["user"])
        host_public = _HOST_PUBLICS.get(sid) or _keys.public_of(paths["host_key"])
        return Endpoint(
            host="127.0.0.1", port=port, user=user, host_key=host_public,
            identity_file=str(paths["identity"]),
            known_hosts_file=str(paths["known_hosts"]),
        )

    @override
    async def inspect(self, handle: Handle) -> Observed:
        if not control.sandbox_dir(self.settings, handle.sandbox_id).is_dir():
            return Observed(live=False, detail="its workspace directory is gone")
        if (control.read_record(self.settings, handle.sandbox_id) or {}).get("stopped"):
            return Observed(live=True, detail="stopped: its workspace is kept")
        listed = await control.call(self.settings, "list")
        if any(e["sandbox_id"] == handle.sandbox_id for e in listed["sandboxes"]):
            return Observed(live=True)
        return Observed(live=False, detail="the local endpoint does not serve it")

    @override
    async def destroy(self, handle: Handle) -> None:
        s = self.settings
        sid = handle.sandbox_id
        d = control.sandbox_dir(s, sid)
        _HOST_PUBLICS.pop(sid, None)
        _SERVED.pop(sid, None)
        here = self._here()
        if here is not None:
            await here.remove_here(sid)
        else:
            await control.call_if_running(s, "remove", sandbox_id=sid)
        if control.owned_by(s, d) is False:  # another home's, on a shared local root
            _keys.remove(s, sid)
            return
        hierarchy = cgroups.detect()  # None unless root
        cgroup = hierarchy.sandbox(sid) if hierarchy is not None else None
        uid = self._private_uid(handle, d)
        if uid is not None and not _killed_in(cgroup):
            dirs.kill_uid(uid)
        self._teardown(d, cgroup)
        if uid is not None:
            dirs.release_uid(s, uid, d)  # after the dir is gone: the claim names it
        _keys.remove(s, sid)
        self._drop_empty_root()

    def _private_uid(self, handle: Handle, d: Path) -> int | None:
        """The sandbox's host uid when we run as root and it lies in our private range:
        never root's or a real user's."""
        if not self._root:
            return None
        uid = handle.data.get("host_uid")
        with contextlib.suppress(OSError):
            uid = (d / "workspace").stat().st_uid
        base = dirs.uid_base(self.settings)
        return uid if isinstance(uid, int) and base <= uid < base + UID_SPAN else None

    def _teardown(self, d: Path, cgroup: cgroups.SandboxCgroup | None) -> None:
        """What a sandbox leaves on the host once its processes are gone."""
        if self._root:
            if cgroup is not None:
                cgroup.remove()
            disk.unmount(d / "workspace", discard=True)
        dirs.rmtree(d)

    @override
    def _drop_empty_root(self) -> None:
        """The per-home directory under /var/lib/sandboxer/local goes with its last sandbox."""
        root = self.settings.local_root
        if not self._root or root.parent != Path(_SHARED_LOCAL):
            return
        with contextlib.suppress(OSError), uids.machine_lock(dirs.claims_dir(self.settings)):
            root.rmdir()  # creates make their dirs under this lock

    @override
    async def owned(self, target: Target) -> list[Handle]:
        # Only what this home marked as its own: others may share SANDBOXER_LOCAL_ROOT.
        ids = {p.name for p in self._dirs() if control.owned_by(self.settings, p)}
        listed = await control.call_if_running(self.settings, "list")
        if listed:
            ids |= {str(e["sandbox_id"]) for e in listed["sandboxes"]}
        return [Handle(sandbox_id=i, extension=self.name, target=TARGET) for i in sorted(ids)]


def _killed_in(cgroup: cgroups.SandboxCgroup | None) -> bool:
    """Whether the sandbox's cgroup exists and is empty now, its processes killed. It
    holds every process of the sandbox: the jail joins it before it runs anything, and no
    process can leave (cgroup.procs is root's; the jail holds no capability). Else the
    caller kills by uid, which scans every process of the host."""
    if cgroup is None or not all(d.is_dir() for d in cgroup.unique_dirs):
        return False
    try:
        cgroup.kill()  # a jail left frozen (its endpoint died while paused) is thawed
    except OSError:
        return False
    return True
