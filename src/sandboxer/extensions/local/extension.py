"""LocalExtension: workspace directories jailed with bubblewrap, served by one daemon."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from typing_extensions import override

from sandboxer import envvars
from sandboxer.config import Settings
from sandboxer.errors import ProvisionFailed, SandboxerError, SandboxNotFound
from sandboxer.extensions import _keys
from sandboxer.extensions._proc import kill_all
from sandboxer.extensions._ssh import SSHExtension
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
from sandboxer.extensions.local import cgroups, control, disk
from sandboxer.extensions.local.spec import LocalSpec
from sandboxer.models.doctor import Check

TARGET = "local"
UID_SPAN = 65536
_SHARED_LOCAL = "/var/lib/sandboxer/local"  # config.Settings.local_root for root homes


def _claims_dir(settings: Settings) -> Path:
    """Machine-wide uid claims: one file per host uid naming the sandbox dir that owns it.

    Several SANDBOXER_HOMEs (users, test runs) share this machine's uid range, so the
    choice of a free uid must be made under one lock for the whole machine.
    """
    return Path(settings.env.get("SANDBOXER_LOCAL_UID_CLAIMS", "/var/lib/sandboxer/uids"))


def _claimed_uids(claims: Path) -> set[int]:
    """Uids claimed by a sandbox dir that still exists; stale claims are dropped."""
    taken: set[int] = set()
    for f in claims.iterdir():
        if not f.name.isdigit():
            continue
        try:
            owner = Path(f.read_text().strip())
        except OSError:
            continue
        if owner.is_dir():
            taken.add(int(f.name))
        else:
            f.unlink(missing_ok=True)
    return taken


def _release_uid(settings: Settings, uid: int, sandbox_dir: Path) -> None:
    claim = _claims_dir(settings) / str(uid)
    with contextlib.suppress(OSError):
        if Path(claim.read_text().strip()) == sandbox_dir:
            claim.unlink()


def _uid_base(settings: Settings) -> int:
    return envvars.local_uid_base(settings.env)


def _proc_uids() -> dict[int, set[int]]:
    """Real uid -> pids of every live (non-zombie) process on the host."""
    out: dict[int, set[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                text = f.read()
        except OSError:
            continue
        state = uid = None
        for line in text.splitlines():
            if line.startswith("State:"):
                state = line.split()[1]
            elif line.startswith("Uid:"):
                uid = int(line.split()[1])
                break
        if uid is not None and state != "Z":
            out.setdefault(uid, set()).add(int(entry.name))
    return out


def kill_uid(uid: int, timeout: float = 3.0) -> None:
    """SIGKILL every process of ``uid`` until none is left (a fork bomb respawns)."""
    if left := kill_all(lambda: _proc_uids().get(uid, set()), timeout):
        raise ProvisionFailed(f"processes of host uid {uid} survive SIGKILL: {sorted(left)}")


def _make_private_dirs(path: Path) -> None:
    """Create ``path`` and missing parents as 0711: passable, not listable, by jail uids."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(exist_ok=True)
        p.chmod(0o711)


def _rmtree(path: Path) -> None:
    """Remove a sandbox dir; already gone is fine."""
    top = str(path)

    def onerror(func: Callable[..., Any], p: str, exc_info: Any) -> None:
        exc = exc_info[1]
        if isinstance(exc, FileNotFoundError):
            return
        parent = os.path.dirname(p)
        # Without root, a jail may leave read-only dirs behind; its owner can chmod them.
        if not isinstance(exc, PermissionError) or p == top or not parent.startswith(top):
            raise exc
        os.chmod(parent, 0o700)
        func(p)

    shutil.rmtree(path, onerror=onerror)


class LocalExtension(SSHExtension, DoctorChecks, Housekeeping, ServesEndpoints):
    """ext.local: a bwrap jail per sandbox, reached through the shared SSH endpoint.

    The endpoint is this extension's housekeeping, in core's keeper process for it.
    """

    name = "ext.local"
    Spec = LocalSpec

    @override
    def doctor_checks(self) -> list[Check]:
        from sandboxer.extensions.local import doctor

        return doctor.checks()

    @override
    def keeper_interval(self) -> float:
        return 1.0

    @override
    async def housekeep(self, host: Host) -> None:
        from sandboxer.extensions.local import endpoint  # asyncssh: only in that process

        await endpoint.serve(self.settings, host)

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
        s = self.settings
        d = control.sandbox_dir(s, sandbox_id)
        ws = d / "workspace"
        _make_private_dirs(s.local_root)
        if not self._root:
            d.mkdir(mode=0o711)
            control.write_owner(s, d)
            ws.mkdir(mode=0o700)
            return os.getuid(), d, ws
        claims = _claims_dir(s)
        claims.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(claims / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # Concurrent creates of every home on this machine serialise here.
            fcntl.flock(fd, fcntl.LOCK_EX)
            _make_private_dirs(s.local_root)  # again: a destroy may have removed it
            taken = set(_proc_uids()) | _claimed_uids(claims)
            for other in self._dirs():
                with contextlib.suppress(OSError):
                    taken.add((other / "workspace").stat().st_uid)
            base = _uid_base(s)
            uid = next((u for u in range(base, base + UID_SPAN) if u not in taken), None)
            if uid is None:
                raise ProvisionFailed(f"no free host uid in [{base}, {base + UID_SPAN})")
            d.mkdir(mode=0o711)
            try:
                d.chmod(0o711)
                control.write_owner(s, d)
                ws.mkdir(mode=0o700)
                os.chown(ws, uid, uid)
                claim = os.open(claims / str(uid), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(claim, "w") as f:
                    f.write(f"{d}\n")
            except BaseException:
                _rmtree(d)
                raise
            return uid, d, ws
        finally:
            os.close(fd)

    @override
    async def provision(self, req: ProvisionRequest, secrets: Mapping[str, SecretStr]) -> Handle:
        s = self.settings
        sid = req.sandbox_id
        spec = req.spec if isinstance(req.spec, LocalSpec) else self._spec(req.spec)
        req.progress("starting the local endpoint")
        starting = asyncio.create_task(control.ensure_running(s))
        try:
            req.progress("creating the workspace")
            try:
                # mkdir claims the id: nothing below may touch a sandbox we did not create.
                host_uid, d, ws = self._create_dirs(sid)
            except FileExistsError as e:
                starting.cancel()
                raise ProvisionFailed(f"ext.local sandbox {sid} already exists") from e
        except BaseException:
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
            raise
        try:
            if self._root and disk.available() is None:
                req.progress(f"making a {spec.limits.disk} workspace")
                await asyncio.to_thread(disk.create, d, spec.limits.disk_bytes, host_uid)
                await asyncio.to_thread(disk.mount, d, ws)
            req.progress("generating keys")
            keys = _keys.generate(s, sid)
            await starting
            record: dict[str, Any] = {
                "sandbox_id": sid, "user": req.user, "port": None,
                "host_key_path": str(keys.host_key), "authorized_key": keys.client_public,
                "workspace": str(ws), "host_uid": host_uid,
                "spec": spec.model_dump(mode="json"), "env": dict(req.env),
                "secret_names": sorted(secrets),
            }
            req.progress("opening the SSH endpoint")
            # Values travel only in this request, over the 0600 control socket; the record
            # written below (sandbox.json) names the secrets but holds no value.
            values = {k: v.get_secret_value() for k, v in secrets.items()}
            port = int((await control.call(s, "add", **record, secrets=values))["port"])
            del values
            record["port"] = port
            control.record_served(s, record, port, keys.host_public)
        except BaseException as e:
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
            await self.destroy(Handle(sandbox_id=sid, extension=self.name, target=TARGET))
            if isinstance(e, SandboxerError) or not isinstance(e, Exception):
                raise
            raise ProvisionFailed(f"ext.local: creating {sid} failed: {e}") from e
        return Handle(sandbox_id=sid, extension=self.name, target=TARGET, data={
            "port": port, "host_uid": host_uid, "dir": str(d), "workspace": str(ws),
            "user": req.user,
        })

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
        rec = self._record(handle)
        # Re-serve after a daemon restart; add is idempotent and keeps the recorded port.
        port = int((await control.call(self.settings, "add", **rec))["port"])
        paths = key_paths(self.settings, handle.sandbox_id)
        return Endpoint(
            host="127.0.0.1", port=port, user=str(rec["user"]),
            host_key=_keys.public_of(paths["host_key"]),
            identity_file=str(paths["identity"]),
            known_hosts_file=str(paths["known_hosts"]),
        )

    @override
    async def inspect(self, handle: Handle) -> Observed:
        if not control.sandbox_dir(self.settings, handle.sandbox_id).is_dir():
            return Observed(live=False, detail="its workspace directory is gone")
        listed = await control.call(self.settings, "list")
        if any(e["sandbox_id"] == handle.sandbox_id for e in listed["sandboxes"]):
            return Observed(live=True)
        return Observed(live=False, detail="the local endpoint does not serve it")

    @override
    async def destroy(self, handle: Handle) -> None:
        s = self.settings
        sid = handle.sandbox_id
        d = control.sandbox_dir(s, sid)
        await control.call_if_running(s, "remove", sandbox_id=sid)
        if control.owned_by(s, d) is False:  # another home's, on a shared local root
            _keys.remove(s, sid)
            return
        uid = self._private_uid(handle, d)
        if uid is not None:
            kill_uid(uid)
        self._teardown(sid, d)
        if uid is not None:
            _release_uid(s, uid, d)  # after the dir is gone: the claim names it
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
        base = _uid_base(self.settings)
        return uid if isinstance(uid, int) and base <= uid < base + UID_SPAN else None

    def _teardown(self, sandbox_id: str, d: Path) -> None:
        """What a sandbox leaves on the host once its processes are gone."""
        if self._root:
            hierarchy = cgroups.detect()
            if hierarchy is not None:
                hierarchy.sandbox(sandbox_id).remove()
            disk.unmount(d / "workspace")
        _rmtree(d)

    def _drop_empty_root(self) -> None:
        """The per-home directory under /var/lib/sandboxer/local goes with its last sandbox."""
        root = self.settings.local_root
        if not self._root or root.parent != Path(_SHARED_LOCAL):
            return
        claims = _claims_dir(self.settings)
        with contextlib.suppress(OSError):
            fd = os.open(claims / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # creates make their dirs under this lock
                root.rmdir()
            finally:
                os.close(fd)

    @override
    async def owned(self, target: Target) -> list[Handle]:
        # Only what this home marked as its own: others may share SANDBOXER_LOCAL_ROOT.
        ids = {p.name for p in self._dirs() if control.owned_by(self.settings, p)}
        listed = await control.call_if_running(self.settings, "list")
        if listed:
            ids |= {str(e["sandbox_id"]) for e in listed["sandboxes"]}
        return [Handle(sandbox_id=i, extension=self.name, target=TARGET) for i in sorted(ids)]
