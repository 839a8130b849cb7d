"""Stop, start, pause, resume and rebind a live sandbox (docs/architecture.md, Lifecycle).

The manager's thin methods of the same names delegate here. Transitions:

    ready  --stop-->   stopped   --start-->  ready     (StopsAndStarts)
    paused --stop-->   stopped
    ready  --pause-->  paused    --resume--> ready     (Pauses)
    ready  --rebind--> ready (secrets bound again; event sandbox.restored), or
           --rebind--> stopped (reason secrets_unresolved) when a ref no longer resolves

A request whose end state is reached already returns the sandbox unchanged (stop of a
stopped one, start of a ready one), as destroy of a destroyed one does; any other state is
a ``Conflict`` (exit 8) that says how to get there.

How concurrent changes settle. The extension is asked first, outside any store
transaction; then the change is recorded with ``store.transition`` from the states it was
asked in, which is the guard: whoever records first wins, and the loser re-reads.

- In one process (the local service, a server) the lifecycle operations of one sandbox run
  one at a time (a lock per id), so two starts never both boot it; across processes the
  extension's operations are idempotent and the store decides.
- A loser whose end state is what the winner reached returns the winner's record.
- ``destroy`` wins over all of them: it moves the sandbox to ``destroying`` first, so a
  stop, start, pause or resume that finishes afterwards cannot record and answers
  ``Conflict`` ("destroyed while …"); a start that lost to a destroy destroys again what it
  booted (destroy is idempotent), so nothing it started outlives the sandbox.
- A pause that lost (to a stop or a destroy) thaws what it froze, best effort.
- ``rebind`` takes no lock (an extension may call it from within its own work) and acts
  only on a sandbox whose processes may run: ``ready``, ``unreachable`` or ``paused`` (an
  endpoint that restored a paused sandbox binds it, then freezes it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, NoReturn

from sandboxer.access import Caller, not_found
from sandboxer.errors import Conflict, InvalidInput, ProvisionFailed, SandboxerError, SecretError
from sandboxer.extensions.base import Binds, Extension, Pauses, StopsAndStarts
from sandboxer.models.common import iso
from sandboxer.models.extension import Handle
from sandboxer.secrets import boundary
from sandboxer.values import not_reachable_hint

if TYPE_CHECKING:
    from pydantic import SecretStr

    from sandboxer.manager import Manager
    from sandboxer.models.profile import Profile
    from sandboxer.models.sandbox import SandboxStatus
    from sandboxer.store.base import Record

log = logging.getLogger(__name__)
START_READY_TIMEOUT = 60.0
SECRETS_UNRESOLVED = "secrets_unresolved"
_EXPIRED = "expired"  # the reason word of the ttl.retain stage (sandboxer.reaping)
_BINDABLE = ("ready", "unreachable", "paused")  # what rebind acts on (the state is kept)
# verb: (the state it leads to, the states it leaves)
_MOVES = {"stop": ("stopped", ("ready", "paused")), "start": ("ready", ("stopped",)),
          "pause": ("paused", ("ready",)), "resume": ("ready", ("paused",))}
_DONE = {"stop": "stopped", "start": "started", "pause": "paused", "resume": "resumed"}
_GERUND = {"stop": "stopping", "start": "starting", "pause": "pausing", "resume": "resuming"}


def reason_text(reason: str, detail: str | None) -> str:
    """The stored ``reason``: the word (``stopped``, ``idle``, ``expired``), then ``: `` and
    the detail when there is one — as ``unserved: …`` and an unreachable target's reason."""
    return f"{reason}: {detail}" if detail else reason


@contextlib.asynccontextmanager
async def one_at_a_time(manager: Manager, sandbox_id: str) -> AsyncIterator[None]:
    """One lifecycle operation (or snapshot) of ``sandbox_id`` at a time in this process."""
    locks = manager.lifecycle_locks
    entry = locks.get(sandbox_id)
    if entry is None:
        entry = locks[sandbox_id] = (asyncio.Lock(), [0])
    lock, users = entry
    users[0] += 1
    try:
        async with lock:
            yield
    finally:
        users[0] -= 1
        if users[0] == 0:
            locks.pop(sandbox_id, None)


def _record(manager: Manager, sandbox_id: str, caller: Caller | None) -> Record:
    rec = manager.store.get_record(sandbox_id)
    if rec is None or (caller is not None and not caller.may_see(rec.status.actor)):
        raise not_found(sandbox_id)
    return rec


def _handle(rec: Record) -> Handle:
    s = rec.status
    if rec.handle is None:
        return Handle(sandbox_id=s.id, extension=s.extension, target=s.target)
    return Handle.model_validate(rec.handle)


def _begin(manager: Manager, sandbox_id: str, caller: Caller | None,
           verb: str) -> tuple[SandboxStatus, Handle | None]:
    """The sandbox and its handle; no handle when it is where ``verb`` leads already."""
    rec = _record(manager, sandbox_id, caller)
    goal, sources = _MOVES[verb]
    if rec.status.state == goal:
        return rec.status, None
    if rec.status.state not in sources:
        raise _wrong_state(rec.status, verb, " or ".join(sources))
    return rec.status, _handle(rec)


def _wrong_state(status: SandboxStatus, verb: str, needs: str) -> Conflict:
    why = f" ({status.reason})" if status.reason and status.state != "ready" else ""
    return Conflict(f"cannot {verb} sandbox {status.id}: it is {status.state}{why}; only a "
                    f"{needs} sandbox can be {_DONE[verb]}",
                    hint=not_reachable_hint(status.id, status.state))


def _cannot(status: SandboxStatus, verb: str, ext: Extension, why: str | None) -> NoReturn:
    """InvalidInput naming the extension and why it cannot (None: it lacks the capability)."""
    if why is None:
        what = "stop and start" if verb in ("stop", "start") else "pause and resume"
        raise InvalidInput(f"cannot {verb} sandbox {status.id}: its extension {ext.name} "
                           f"cannot {what} sandboxes",
                           hint=f"`sandboxer destroy {status.id}` ends it; its data goes too")
    raise InvalidInput(f"cannot {verb} sandbox {status.id}: {ext.name} says: {why}",
                       hint=f"`sandboxer destroy {status.id}` ends it")


def _stopper(manager: Manager, status: SandboxStatus, handle: Handle,
             verb: str) -> tuple[Extension, StopsAndStarts]:
    ext = manager.extension(status.extension)
    if not isinstance(ext, StopsAndStarts):
        _cannot(status, verb, ext, None)
    why = ext.stoppable(handle) if verb == "stop" else None
    if why:
        _cannot(status, verb, ext, why)
    return ext, ext


def _pauser(manager: Manager, status: SandboxStatus, handle: Handle, verb: str) -> Pauses:
    ext = manager.extension(status.extension)
    if not isinstance(ext, Pauses):
        _cannot(status, verb, ext, None)
    why = ext.pausable(handle) if verb == "pause" else None
    if why:
        _cannot(status, verb, ext, why)
    return ext


def _lost(manager: Manager, sandbox_id: str, verb: str, goal: str) -> SandboxStatus:
    """After a transition lost to a concurrent change: the winner's record when it reached
    ``goal`` too, else Conflict saying what happened."""
    current = manager.store.get(sandbox_id)
    if current is not None and current.state == goal:
        return current
    state = current.state if current is not None else "destroyed"
    if state in ("destroying", "destroyed"):
        raise Conflict(f"sandbox {sandbox_id} was destroyed while it was being {verb}",
                       hint=f"see `sandboxer get {sandbox_id}`")
    raise Conflict(f"sandbox {sandbox_id} became {state} while it was being {verb}",
                   hint=not_reachable_hint(sandbox_id, state))


def _failed(manager: Manager, verb: str, sandbox_id: str, e: BaseException, stays: str,
            secrets: dict[str, SecretStr] | None = None) -> BaseException:
    """What to raise when the extension failed: Conflict when the sandbox was destroyed
    meanwhile (what broke follows from that), its own SandboxerError (not a
    ProvisionFailed) as it is, anything else as ProvisionFailed (exit 5), redacted."""
    if not isinstance(e, Exception):
        return e
    if _destroyed(manager, sandbox_id):
        return Conflict(f"sandbox {sandbox_id} was destroyed while it was being {_DONE[verb]}",
                        hint=f"see `sandboxer get {sandbox_id}`")
    if isinstance(e, SandboxerError) and not isinstance(e, ProvisionFailed):
        return e
    text = e.render() if isinstance(e, SandboxerError) else f"{type(e).__name__}: {e}"
    return ProvisionFailed(f"{_GERUND[verb]} {sandbox_id} failed: "
                           f"{boundary.redact(text, secrets or {})}",
                           hint=f"it stays {stays}; retry, or `sandboxer destroy {sandbox_id}`")


def _destroyed(manager: Manager, sandbox_id: str) -> bool:
    """Destroyed (or being destroyed, or gone) meanwhile: a destroy wins over every change."""
    current = manager.store.get(sandbox_id)
    return current is None or current.state in ("destroying", "destroyed")


async def _quietly(what: str, coro: Any) -> Any:
    try:
        return await asyncio.shield(coro)
    except Exception as e:  # cleanup after a failure must not hide the failure
        log.warning("%s failed too: %s", what, e)
        return None


# -- stop and start ----------------------------------------------------------------------


async def stop(manager: Manager, sandbox_id: str, *, reason: str = "stopped",
               detail: str | None = None, caller: Caller | None = None) -> SandboxStatus:
    """ready | paused -> stopped: its processes end, its data stays (``StopsAndStarts``)."""
    async with one_at_a_time(manager, sandbox_id):
        s, handle = _begin(manager, sandbox_id, caller, "stop")
        if handle is None:
            return s
        _base, ext = _stopper(manager, s, handle, "stop")
        manager.progress(f"{sandbox_id}: stopping")
        try:
            new = await ext.stop(handle)
        except BaseException as e:
            raise _failed(manager, "stop", sandbox_id, e, s.state) from e
        try:
            done = manager.store.transition(
                sandbox_id, from_states={"ready", "paused"}, to_state="stopped",
                event="sandbox.stopped", reason=reason_text(reason, detail),
                handle=new.model_dump(mode="json"))
        except Conflict:
            return _lost(manager, sandbox_id, "stopped", "stopped")
        manager.progress(f"{sandbox_id}: stopped")
        return done


async def _start_secrets(manager: Manager, profile: Profile,
                         sandbox_id: str) -> dict[str, SecretStr]:
    """The profile's refs resolved again at the boundary, as create does (exit 7)."""
    refs = boundary.parse(profile, manager.settings)
    if not refs:
        return {}
    checks = await asyncio.to_thread(boundary.check, refs, manager.settings)
    try:
        boundary.ensure_valid(profile.id, checks)
    except SecretError as e:
        raise type(e)(e.message, hint=f"sandbox {sandbox_id} stays stopped; fix the ref(s), "
                      f"then `sandboxer start {sandbox_id}` again") from e
    return await asyncio.to_thread(boundary.read, refs, manager.settings)


def _refuse_retained(status: SandboxStatus) -> None:
    """A sandbox in its ``ttl.retain`` stage (stopped because its lease ended) has no lease
    to run on: its ``expires_at`` is when it is destroyed. Started as it is, it would run
    until then and, at that time, enter another retain stage — again and again, past
    ``ttl.max``. ``extend`` (bounded by ``ttl.max``) gives it a lease first."""
    if status.state == "stopped" and (status.reason or "").split(":")[0] == _EXPIRED:
        raise Conflict(f"cannot start sandbox {status.id}: its lease ended; it is kept "
                       f"stopped until {iso(status.expires_at)} (ttl.retain), then destroyed",
                       hint=f"`sandboxer extend {status.id} --ttl DURATION` gives it a new "
                       f"lease (up to its ttl.max), then `sandboxer start {status.id}`")


async def start(manager: Manager, sandbox_id: str, *,
                caller: Caller | None = None) -> SandboxStatus:
    """stopped -> ready: boot it again with its data, secrets resolved again, then wait for
    SSH and store the descriptor again (same host key; the port may change). A sandbox in
    its retain stage needs a new lease (``extend``) first."""
    async with one_at_a_time(manager, sandbox_id):
        s, handle = _begin(manager, sandbox_id, caller, "start")
        if handle is None:
            return s
        _refuse_retained(s)
        base, ext = _stopper(manager, s, handle, "start")
        profile = manager.catalog.get(s.profile)
        secrets = await _start_secrets(manager, profile, sandbox_id)
        manager.progress(f"{sandbox_id}: starting")
        new = handle
        try:
            new = await ext.start(handle, dict(profile.setup.env), secrets)
            manager.store.set_handle(sandbox_id, new.model_dump(mode="json"))
            manager.progress(f"{sandbox_id}: waiting for SSH")
            await base.wait_ready(new, START_READY_TIMEOUT)
            reach = manager.descriptor(sandbox_id, await base.endpoint(new), profile)
        except BaseException as e:
            stopped = await _quietly(f"stopping {sandbox_id} again", ext.stop(new)) or new
            if _destroyed(manager, sandbox_id):
                await _quietly(f"destroying {sandbox_id} again", base.destroy(new))
            text = e.render() if isinstance(e, SandboxerError) else f"{type(e).__name__}: {e}"
            with contextlib.suppress(Conflict):
                manager.store.transition(
                    sandbox_id, from_states={"stopped"}, to_state="stopped", event=None,
                    handle=stopped.model_dump(mode="json"),
                    error=boundary.redact(f"start failed: {text}", secrets)[-2000:])
            raise _failed(manager, "start", sandbox_id, e, "stopped", secrets) from e
        try:
            done = manager.store.transition(
                sandbox_id, from_states={"stopped"}, to_state="ready",
                event="sandbox.started", reason=None, error=None, reachability=reach,
                handle=new.model_dump(mode="json"))
        except Conflict:
            if _destroyed(manager, sandbox_id):
                await _quietly(f"destroying {sandbox_id} again", base.destroy(new))
            return _lost(manager, sandbox_id, "started", "ready")
        manager.progress(f"{sandbox_id}: ready")
        return done


# -- pause and resume --------------------------------------------------------------------


async def pause(manager: Manager, sandbox_id: str, *, reason: str = "paused",
                detail: str | None = None, caller: Caller | None = None) -> SandboxStatus:
    """ready -> paused: every process frozen, memory kept (``Pauses``)."""
    async with one_at_a_time(manager, sandbox_id):
        s, handle = _begin(manager, sandbox_id, caller, "pause")
        if handle is None:
            return s
        ext = _pauser(manager, s, handle, "pause")
        try:
            await ext.pause(handle)
        except BaseException as e:
            raise _failed(manager, "pause", sandbox_id, e, "ready") from e
        try:
            return manager.store.transition(
                sandbox_id, from_states={"ready"}, to_state="paused", event="sandbox.paused",
                reason=reason_text(reason, detail))
        except Conflict:
            current = manager.store.get(sandbox_id)
            if current is None or current.state != "paused":
                await _quietly(f"thawing {sandbox_id} again", ext.resume(handle))
            return _lost(manager, sandbox_id, "paused", "paused")


async def resume(manager: Manager, sandbox_id: str, *,
                 caller: Caller | None = None) -> SandboxStatus:
    """paused -> ready: thawed, it carries on where it was; the descriptor is unchanged."""
    async with one_at_a_time(manager, sandbox_id):
        s, handle = _begin(manager, sandbox_id, caller, "resume")
        if handle is None:
            return s
        ext = _pauser(manager, s, handle, "resume")
        try:
            await ext.resume(handle)
        except BaseException as e:
            raise _failed(manager, "resume", sandbox_id, e, "paused") from e
        try:
            return manager.store.transition(
                sandbox_id, from_states={"paused"}, to_state="ready", event="sandbox.resumed",
                reason=None)
        except Conflict:
            return _lost(manager, sandbox_id, "resumed", "ready")


# -- rebind ------------------------------------------------------------------------------


def _kind(ref: str) -> str:
    return ref.split(":", 1)[0] if ":" in ref else "secret"


async def _resolve_again(manager: Manager, status: SandboxStatus
                         ) -> tuple[Profile | None, dict[str, SecretStr], str | None]:
    """The profile, its secrets resolved again, and why not (names and ref kinds only)."""
    try:
        profile = manager.catalog.get(status.profile)
    except SandboxerError as e:
        return None, {}, f"its profile cannot be read any more: {e.message}"
    try:
        refs = boundary.parse(profile, manager.settings)
        if not refs:
            return profile, {}, None
        checks = await asyncio.to_thread(boundary.check, refs, manager.settings)
        failed = [c for c in checks if not c.ok]
        if failed:
            names = "; ".join(f"{c.name} ({_kind(c.ref)} ref): {c.code}" for c in failed)
            return profile, {}, f"secret ref(s) of {profile.id} no longer resolve: {names}"
        return profile, await asyncio.to_thread(boundary.read, refs, manager.settings), None
    except SecretError as e:  # the grammar or policy changed, or a read failed
        return profile, {}, f"secret ref(s) of {profile.id} no longer resolve: {e.message}"


async def rebind(manager: Manager, sandbox_id: str) -> bool:
    """``Host.rebind``: give a restarted sandbox (ready, unreachable or paused) its env and
    secrets back (``Binds``), or stop it (reason ``secrets_unresolved``) when they cannot be
    had, or when binding them failed. True when bound, or when there was nothing to do
    (stopped, provisioning, being destroyed; an extension without ``Binds`` whose profile
    declares no secret refs); False when core stopped it."""
    rec = manager.store.get_record(sandbox_id)
    if rec is None:
        raise not_found(sandbox_id)
    s = rec.status
    if s.state not in _BINDABLE or rec.pool is not None:
        return True  # an unclaimed pooled sandbox was never given anything (sandboxer.pools)
    handle = _handle(rec)
    ext = manager.extension(s.extension)
    profile, secrets, why = await _resolve_again(manager, s)
    if why is None and profile is not None and isinstance(ext, Binds):
        try:
            await ext.bind(handle, dict(profile.setup.env), secrets)
        except Exception as e:  # not bound: it must not go on without them (below)
            text = e.render() if isinstance(e, SandboxerError) else f"{type(e).__name__}: {e}"
            why = boundary.redact(f"binding its secrets again failed: {text}", secrets)
        else:
            with contextlib.suppress(Conflict):  # stopped or destroyed meanwhile: theirs
                manager.store.transition(sandbox_id, from_states={s.state},
                                         to_state=s.state, event="sandbox.restored")
            return True
    if why is None and profile is not None:
        if not profile.setup.secret_refs:
            return True  # nothing of ours to give back
        why = (f"{ext.name} cannot give a restarted sandbox its secrets back (it does not "
               "bind secrets after provision)")
    stopped: Handle | None = None
    if isinstance(ext, StopsAndStarts) and ext.stoppable(handle) is None:
        stopped = await _quietly(f"stopping {sandbox_id}", ext.stop(handle))
    # The host resolves in its own environment (a keeper's is allow-listed: no env: ref's
    # variable); the caller's resolves them again.
    text = (f"{why}; `sandboxer start {sandbox_id}` where they resolve (an env: ref's "
            "variable set) brings it back")[-2000:]
    with contextlib.suppress(Conflict):
        if stopped is None:  # it could not be stopped: recorded as it is, never "stopped"
            log.warning("%s runs without its secrets and could not be stopped: %s",
                        sandbox_id, why)
            manager.store.transition(
                sandbox_id, from_states={s.state}, to_state=s.state, event=None,
                reason=SECRETS_UNRESOLVED,
                error=(f"{why}; it could not be stopped: destroy it, or run `sandboxer "
                       f"stop {sandbox_id}` and `start` where the refs resolve")[-2000:])
            return False
        log.warning("%s stopped: %s", sandbox_id, why)
        manager.store.transition(
            sandbox_id, from_states=set(_BINDABLE), to_state="stopped",
            event="sandbox.stopped", reason=SECRETS_UNRESOLVED, error=text,
            handle=stopped.model_dump(mode="json"))
    return False
