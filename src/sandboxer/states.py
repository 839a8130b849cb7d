"""The words of sandbox and snapshot states and the lifecycle operations: plain tuples,
imported by the models, the store, every shell, and the CLI's thin paths (which is why
they are not in ``values``, whose regexes and datetime those paths do not need)."""

from __future__ import annotations

# A snapshot's states (models.snapshot.SnapshotState): ``creating`` while the extension
# records it, ``ready`` to create from, ``deleting`` while its artifact is removed;
# ``deleted`` (deleted, or its retention ended) and ``failed`` are final.
SNAPSHOT_STATES = ("creating", "ready", "deleting", "deleted", "failed")
SNAPSHOT_FINAL_STATES = frozenset({"deleted", "failed"})
# What a sandbox must be in to be snapshotted (the extension quiesces a ready one).
SNAPSHOTTABLE_STATES = ("ready", "stopped", "paused")
# A sandbox's states (models.sandbox.State); a live one holds a slot of its target.
# ``unreachable``: ready, but its target failed its last probe (sandboxer.fleet).
# ``stopped``: its processes ended, its data kept; ``paused``: frozen, memory kept. Both
# still hold their slot (their data or memory is still on the target).
STATES = ("provisioning", "ready", "unreachable", "stopped", "paused", "destroying",
          "destroyed", "failed")
LIVE_STATES = ("provisioning", "ready", "unreachable", "stopped", "paused", "destroying")
FINAL_STATES = frozenset({"destroyed", "failed"})
# The lifecycle operations of a live sandbox (CLI commands, API routes, MCP tools, the
# local service's ops): stop -> stopped, start -> ready, pause -> paused, resume -> ready.
LIFECYCLE = ("stop", "start", "pause", "resume")
