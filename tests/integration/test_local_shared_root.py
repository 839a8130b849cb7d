"""Two homes sharing one SANDBOXER_LOCAL_ROOT leave each other's sandboxes alone.

Each sandbox dir carries an owner mark (``owner``: the home's instance id and path) written
when it is created; ``owned()``, ``reconcile``, ``destroy`` and a restarting endpoint of one
home touch only the dirs marked with it (issue 11 item 5).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sandboxer.config import Settings
from sandboxer.extensions._ssh import ssh_run
from sandboxer.extensions.base import Endpoint, Handle, ProvisionRequest
from sandboxer.extensions.local import LocalExtension, control
from sandboxer.extensions.local.spec import LocalSpec
from sandboxer.manager import Manager
from sandboxer.models.profile import Profile

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]


@pytest.fixture
def homes() -> Iterator[tuple[Settings, Settings]]:
    base = Path("/var/tmp/sandboxer-test")
    base.mkdir(exist_ok=True)
    base.chmod(0o711)
    root = Path(tempfile.mkdtemp(prefix="shared-", dir=base))
    root.chmod(0o711)
    made = [Path(tempfile.mkdtemp(prefix=f"sbx-home-{n}-")) for n in "ab"]
    pair = tuple(Settings.from_env({
        **os.environ, "SANDBOXER_HOME": str(h), "SANDBOXER_LOCAL_ROOT": str(root),
        "SANDBOXER_LOCAL_IDLE_EXIT": "0.5"}) for h in made)
    a, b = pair
    yield a, b
    for s in pair:
        ext = LocalExtension(s)
        for h in asyncio.run(ext.owned(ext.targets(s)[0])):
            asyncio.run(ext.destroy(h))
    for p in [*made, root]:
        shutil.rmtree(p, ignore_errors=True)


def create(s: Settings, sid: str) -> tuple[Handle, Endpoint]:
    ext = LocalExtension(s)
    req = ProvisionRequest(
        sandbox_id=sid, profile=Profile(id="profile.test", extension="ext.local"),
        spec=LocalSpec(), target=ext.targets(s)[0], settings=s, user="dev", labels={},
        env={}, expires_at=datetime.now(UTC),
    )

    async def go() -> tuple[Handle, Endpoint]:
        h = await ext.provision(req, {})
        await ext.wait_ready(h, timeout=20)
        return h, await ext.endpoint(h)

    return asyncio.run(go())


def test_homes_sharing_a_local_root_leave_each_other_alone(
    homes: tuple[Settings, Settings],
) -> None:
    a, b = homes
    sid_a, sid_b = f"sbx-a{os.getpid()}", f"sbx-b{os.getpid()}"
    _h, ep_a = create(a, sid_a)
    d = control.sandbox_dir(a, sid_a)
    mark = json.loads(control.owner_path(d).read_text())
    assert mark == {"instance": a.instance, "home": str(a.home)}
    (d / "workspace" / "keep").write_text("a's work")
    ext_a, ext_b = LocalExtension(a), LocalExtension(b)

    # B owns nothing of A's, and destroying A's id from B touches nothing of A's.
    assert [h.sandbox_id for h in asyncio.run(ext_a.owned(ext_a.targets(a)[0]))] == [sid_a]
    assert asyncio.run(ext_b.owned(ext_b.targets(b)[0])) == []
    asyncio.run(ext_b.destroy(Handle(sandbox_id=sid_a, extension="ext.local", target="local")))
    # reconcile in B, the path that used to kill A's uid and delete its workspace.
    removed = asyncio.run(Manager(b).reconcile())
    assert sid_a not in [h.sandbox_id for h in removed]
    assert (d / "workspace" / "keep").read_text() == "a's work"
    rc, out = asyncio.run(ssh_run(ep_a, "cat keep", timeout=30))
    assert (rc, out) == (0, "a's work")

    # B's endpoint, started (and restoring) for B's own sandbox, does not serve A's.
    create(b, sid_b)
    listed = asyncio.run(control.request(b, "list"))["sandboxes"]
    assert [e["sandbox_id"] for e in listed] == [sid_b]
    assert [h.sandbox_id for h in asyncio.run(ext_b.owned(ext_b.targets(b)[0]))] == [sid_b]
    asyncio.run(Manager(a).reconcile())  # A's store knows neither: removes only its own
    assert control.sandbox_dir(b, sid_b).is_dir()
    assert not d.exists()
