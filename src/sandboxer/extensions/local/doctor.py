"""ext.local's `sandboxer doctor` checks: can this machine start its jails, and what it
lets the jail enforce (``enforcement``)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sandboxer.models.doctor import Check


def _jail(bwrap: str) -> Check:
    user = 65534 if os.geteuid() == 0 else None
    try:
        done = subprocess.run(
            # As ext.local runs it: a second user namespace that cannot make a third.
            [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--uid", "1000",
             "--ro-bind", "/", "/", "true"],
            capture_output=True, timeout=10, user=user, check=False,
        )
        ok, detail = done.returncode == 0, (done.stderr.decode(errors="replace").strip()
                                            or "an unprivileged jail starts")
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, detail = False, str(e)
    return Check("jail", ok, detail, "enable unprivileged user namespaces (see the checks above)")


def checks() -> list[Check]:
    from sandboxer.extensions.local import enforcement

    out: list[Check] = []
    bwrap = shutil.which("bwrap")
    out.append(Check("bubblewrap", bwrap is not None, bwrap or "bwrap not on PATH",
                     "apt-get install bubblewrap"))
    max_ns = Path("/proc/sys/user/max_user_namespaces")
    n = int(max_ns.read_text()) if max_ns.exists() else 0
    out.append(Check("user namespaces", n > 0, f"user.max_user_namespaces = {n}",
                     "sysctl -w user.max_user_namespaces=15000"))
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    if clone.exists():
        v = clone.read_text().strip()
        out.append(Check("unprivileged user namespaces", v == "1",
                         f"kernel.unprivileged_userns_clone = {v}",
                         "sysctl -w kernel.unprivileged_userns_clone=1"))
    if bwrap:
        out.append(_jail(bwrap))
    out += [Check(*c) for c in enforcement.report()]
    return out
