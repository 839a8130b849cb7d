"""The MCP tools: typed parameters, output schemas, annotations and one error format.

Parameters carry descriptions, enums and the patterns of the HTTP API's requests. A pattern
is published in the input schema but checked by the service, not by the SDK, so a bad ttl
or an unknown profile gets the service's own error, the one the CLI prints; so does an
unknown state in the list filter (the schema lists the states as an enum). Results are
the API's documents, validated against the models their output schema is made from.

Every error reaches the client as one line of ``CODE: message`` (``SandboxerError.render``,
redacted): the SDK's "Error executing tool …" prefix and pydantic's multi-line dumps are
replaced by the error the same input gets from the CLI.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import Field, ValidationError, WithJsonSchema
from typing_extensions import override

from sandboxer.errors import InvalidInput, SandboxerError, UsageError
from sandboxer.models.reachability import Reachability
from sandboxer.models.requests import DURATION, PROFILE_ID
from sandboxer.models.responses import (
    DoctorReport,
    ImageBuilt,
    Pool,
    PoolList,
    ProfileList,
    SandboxList,
    TargetList,
)
from sandboxer.models.sandbox import STATES, SandboxStatus
from sandboxer.redaction import redact
from sandboxer.values import (
    LABEL_KEY,
    LABEL_VALUE,
    NAME_PATTERN,
    SANDBOX_ID,
    SNAPSHOT_ID,
    safe_repr,
)

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

    from sandboxer.client import Client

log = logging.getLogger(__name__)
T = TypeVar("T")
INSTRUCTIONS = (
    "sand-boxer provisions isolated, leased sandboxes from named profiles and tells you how "
    "to reach them over SSH. list_profiles shows what can be created; create_sandbox returns "
    "once the sandbox is ready, with its reachability descriptor (ssh_command); destroy it "
    "when done (leases also expire on their own). Errors read `CODE: message`."
)


def _string(pattern: str, **more: Any) -> Any:
    """A string whose ``pattern`` the input schema publishes and the service checks."""
    return WithJsonSchema({"type": "string", "pattern": pattern, **more})


SandboxId = Annotated[str, _string(f"^{SANDBOX_ID.pattern}$", maxLength=64),
                      Field(description="a sandbox id, e.g. sbx-abcdefghij")]
ProfileId = Annotated[str, _string(PROFILE_ID),
                      Field(description="a profile id from list_profiles, e.g. profile.local")]
Ttl = Annotated[str, _string(DURATION)]
TTL_TEXT = "a duration: digits and one unit of s, m, h or d (90s, 30m, 8h, 2d)"
Labels = Annotated[dict[str, str], WithJsonSchema({
    "type": "object", "maxProperties": 64,
    "propertyNames": {"pattern": f"^{LABEL_KEY.pattern}$"},
    "additionalProperties": {"type": "string", "pattern": f"^{LABEL_VALUE.pattern}$"}})]
Name = Annotated[str, _string(NAME_PATTERN, maxLength=128)]
SnapshotRef = Annotated[str, _string(f"^{SNAPSHOT_ID.pattern}$", maxLength=64)]
# The schema lists the states; the service refuses an unknown one, with the message every
# transport gives for it.
State = Annotated[str, WithJsonSchema({"type": "string", "enum": list(STATES)})]


def error_text(e: SandboxerError) -> str:
    """What a tool error reads: ``CODE: message``, one paragraph, redacted."""
    return f"{e.code}: {redact(e.render())}"


def argument_error(e: ValidationError) -> SandboxerError:
    """Arguments the SDK refused, as the error the CLI gives for the same input."""
    first = e.errors(include_url=False)[0]
    loc = [str(p) for p in first.get("loc", ())]
    field = loc[0] if loc else "arguments"
    kind = first.get("type", "")
    if kind in ("literal_error", "enum"):
        choices = ", ".join(repr(s) for s in STATES) if field == "state" else \
            first.get("ctx", {}).get("expected", "")
        return UsageError(f"{field}: invalid choice: {safe_repr(first.get('input'))} "
                          f"(choose from {choices})")
    if kind == "missing":
        return UsageError(f"the following arguments are required: {field}")
    if kind == "value_error":
        return InvalidInput(str(first.get("ctx", {}).get("error", first.get("msg"))))
    return InvalidInput(f"{'.'.join(loc) or field}: {first.get('msg', 'invalid')}")


def failure(exc: BaseException) -> SandboxerError:
    """The SandboxerError behind what a tool call raised (through the SDK's wrappers)."""
    from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, SandboxerError):
            return seen
        if isinstance(seen, ValidationError) and not isinstance(exc, UnexpectedToolError):
            return argument_error(seen)
        seen = seen.__cause__
    if isinstance(exc, ToolError) and not isinstance(exc, UnexpectedToolError):
        text = str(exc).removeprefix("Error executing tool ")
        return UsageError(text[:1].lower() + text[1:])  # "Unknown tool: x"
    cause = exc.__cause__ or exc  # the detail goes to the log (stderr), not to the client
    log.error("tool call failed unexpectedly: %s", redact(f"{type(cause).__name__}: {cause}"))
    return SandboxerError(f"unexpected error ({type(cause).__name__}); see the server log")


def _annotations(title: str, *, read_only: bool = False, destructive: bool = False,
                 idempotent: bool = False, open_world: bool = False) -> Any:
    from mcp_types import ToolAnnotations

    return ToolAnnotations(title=title, read_only_hint=read_only,
                           destructive_hint=destructive, idempotent_hint=idempotent,
                           open_world_hint=open_world)


def _server_class() -> type[MCPServer[Any]]:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp_types import CallToolResult, TextContent

    class Server(MCPServer[Any]):
        """MCPServer whose tool errors read ``CODE: message``."""

        @override
        async def call_tool(self, name: str, arguments: dict[str, Any],
                            context: Any = None) -> Any:
            try:
                return await super().call_tool(name, arguments, context)
            except ToolError as exc:
                text = error_text(failure(exc))
                return CallToolResult(content=[TextContent(type="text", text=text)],
                                      is_error=True)

    return Server


def build(client: Client) -> MCPServer[Any]:
    """The MCP server with its tools bound to ``client``."""
    import anyio.to_thread

    from sandboxer import __version__

    server = _server_class()("sand-boxer", version=__version__, instructions=INSTRUCTIONS)
    lock = threading.Lock()  # one client, one store connection: one call at a time

    def locked(fn: Callable[[], T]) -> T:
        with lock:
            return fn()

    async def call(fn: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(locked, fn)

    reads = {"read_only": True, "idempotent": True}

    @server.tool(description="The profiles sandboxes can be created from.",
                 annotations=_annotations("List profiles", **reads))
    async def list_profiles() -> ProfileList:
        items = await call(client.list_profiles)
        return ProfileList.model_validate({"schema": "sandboxer.profiles/v1", "items": items})

    @server.tool(description="Create a sandbox from a profile and wait until it is ready "
                 "(or failed). Returns the sandbox with its reachability.",
                 annotations=_annotations("Create a sandbox", open_world=True))
    async def create_sandbox(
        profile: ProfileId,
        ttl: Annotated[Ttl | None, Field(
            description=f"lease length, {TTL_TEXT}; at most the profile's ttl.max; "
            "default: the profile's ttl.default")] = None,
        labels: Annotated[Labels | None, Field(
            description="key=value labels, e.g. {\"team\": \"infra\"}")] = None,
        name: Annotated[Name | None, Field(description="a free-form name to show")] = None,
        from_snapshot: Annotated[SnapshotRef | None, Field(
            description="start from this ready snapshot's data (snap-…), on its target; "
            "the profile's extension must be the snapshot's")] = None,
    ) -> SandboxStatus:
        status = await call(lambda: client.create(profile, ttl=ttl, labels=labels or {},
                                                  name=name, from_snapshot=from_snapshot))
        return status

    @server.tool(description="One sandbox by id (sbx-…), in any state.",
                 annotations=_annotations("Get a sandbox", **reads))
    async def get_sandbox(sandbox_id: SandboxId) -> SandboxStatus:
        return SandboxStatus.model_validate(await call(lambda: client.get_document(sandbox_id)))

    @server.tool(description="Your sandboxes: live ones (provisioning, ready, unreachable, "
                 "stopped, paused, destroying) by default; all=true adds destroyed and "
                 "failed.",
                 annotations=_annotations("List sandboxes", **reads))
    async def list_sandboxes(
        state: Annotated[list[State] | None, Field(
            description="only these states", max_length=len(STATES))] = None,
        profile: Annotated[str | None, Field(description="only this profile id")] = None,
        all: Annotated[bool, Field(description="include destroyed and failed")] = False,
    ) -> SandboxList:
        states: list[str] | None = list(state) if state else None
        items = await call(lambda: client.list_documents(states=states, profile=profile,
                                                         all=all))
        return SandboxList.model_validate({"schema": "sandboxer.sandboxes/v1", "items": items})

    @server.tool(description="Renew a sandbox's lease (ready, stopped or paused, kept in its "
                 "state) to now + ttl, never past the profile's ttl.max from creation.",
                 annotations=_annotations("Extend a lease"))
    async def extend_sandbox(
        sandbox_id: SandboxId,
        ttl: Annotated[Ttl, Field(description=f"the new lease length from now, {TTL_TEXT}")],
    ) -> SandboxStatus:
        return await call(lambda: client.extend(sandbox_id, ttl))

    @server.tool(description="Destroy a sandbox; idempotent. Returns its final state.",
                 annotations=_annotations("Destroy a sandbox", destructive=True,
                                          idempotent=True))
    async def destroy_sandbox(sandbox_id: SandboxId) -> SandboxStatus:
        return SandboxStatus.model_validate(
            await call(lambda: client.destroy_document(sandbox_id)))

    @server.tool(description="Stop a ready or paused sandbox: its processes end, its files "
                 "stay; start_sandbox boots it again. Idempotent.",
                 annotations=_annotations("Stop a sandbox", destructive=True, idempotent=True))
    async def stop_sandbox(sandbox_id: SandboxId) -> SandboxStatus:
        return await call(lambda: client.stop(sandbox_id))

    @server.tool(description="Start a stopped sandbox again with its files intact and its "
                 "secrets resolved again; returns it ready, with its reachability (the port "
                 "may have changed). Idempotent.",
                 annotations=_annotations("Start a sandbox", idempotent=True))
    async def start_sandbox(sandbox_id: SandboxId) -> SandboxStatus:
        return await call(lambda: client.start(sandbox_id))

    @server.tool(description="Pause a ready sandbox: every process frozen, memory kept; "
                 "resume_sandbox thaws it where it was. Idempotent.",
                 annotations=_annotations("Pause a sandbox", idempotent=True))
    async def pause_sandbox(sandbox_id: SandboxId) -> SandboxStatus:
        return await call(lambda: client.pause(sandbox_id))

    @server.tool(description="Resume a paused sandbox where it was. Idempotent.",
                 annotations=_annotations("Resume a sandbox", idempotent=True))
    async def resume_sandbox(sandbox_id: SandboxId) -> SandboxStatus:
        return await call(lambda: client.resume(sandbox_id))

    @server.tool(description="How to reach a ready sandbox: host, port, user, identity_file, "
                 "pinned known_hosts line and a ready-to-run ssh_command.",
                 annotations=_annotations("How to reach a sandbox", **reads))
    async def get_reachability(sandbox_id: SandboxId) -> Reachability:
        return await call(lambda: client.reachability(sandbox_id))

    @server.tool(description="Where sandboxes can be placed: the targets of every extension "
                 "that has targets of its own (docker hosts, …), with their capacity.",
                 annotations=_annotations("List targets", **reads))
    async def list_targets() -> TargetList:
        items = await call(client.targets_list)
        return TargetList.model_validate({"schema": "sandboxer.targets/v1", "items": items})

    @server.tool(description="Warm pools: per profile, how many sandboxes are kept "
                 "provisioned ahead for create_sandbox to claim (an admin also sees them).",
                 annotations=_annotations("List warm pools", **reads))
    async def list_pools() -> PoolList:
        items = await call(client.pools_list)
        return PoolList.model_validate({"schema": "sandboxer.pools/v1", "items": items})

    @server.tool(description="One profile's warm pool: its size, max_age and how many "
                 "sandboxes are ready to be claimed.",
                 annotations=_annotations("Show a warm pool", **reads))
    async def show_pool(profile: ProfileId) -> Pool:
        return Pool.model_validate(await call(lambda: client.pools_show(profile)))

    @server.tool(description="Build (or find cached) the image a profile needs, or an image "
                 "recipe an extension offers by name (admin tokens only).",
                 annotations=_annotations("Build an image", idempotent=True,
                                          open_world=True))
    async def build_image(
        name: Annotated[str, _string(PROFILE_ID), Field(
            description="a profile id (profile.…) or an image name an extension builds")],
        target: Annotated[str, _string(NAME_PATTERN, maxLength=63), Field(
            description="the target to build for")] = "local",
        force: Annotated[bool, Field(description="build again even when cached")] = False,
    ) -> ImageBuilt:
        doc = await call(lambda: client.images_build(name, target=target, force=force))
        return ImageBuilt.model_validate({"schema": "sandboxer.image/v1", **doc})

    @server.tool(description="What the machine that runs sandboxes lacks, and how to fix "
                 "it: every extension's checks and sand-boxer's own (admin tokens only).",
                 annotations=_annotations("Check the machine", **reads))
    async def doctor() -> DoctorReport:
        checks = [c.document() for c in await call(client.doctor)]
        return DoctorReport.model_validate({"schema": "sandboxer.doctor/v1",
                                            "ok": all(c["ok"] for c in checks),
                                            "checks": checks})

    from sandboxer.mcp import snapshot_tools

    snapshot_tools.register(server, client, call)
    return server
