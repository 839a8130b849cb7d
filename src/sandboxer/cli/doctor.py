"""`sandboxer doctor`: what is missing on this machine and how to fix it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandboxer.config import Settings


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    d = sub.add_parser("doctor", parents=[common], help="check this machine")
    d.set_defaults(handler=cmd_doctor)


def _check(name: str, ok: bool, detail: str, fix: str | None = None) -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail, "fix": None if ok else fix}


def _permissions(settings: Settings) -> dict[str, Any]:
    """Who can write the home, its parents and the local root (before ensure() repairs)."""
    import os

    from sandboxer import perms

    found = perms.findings(settings)
    refused = [f for f in found if f.mode is None]
    if not found:
        detail = (f"{settings.home} and {settings.local_root}: only you (uid {os.geteuid()}) "
                  "and root can write them")
    else:
        detail = "; ".join(
            f"{f.path} {f.problem}" + ("" if f.mode is None else " (repaired on use)")
            for f in found)
    return _check("home permissions", not refused, detail, "; ".join(f.fix for f in refused))


def checks() -> list[dict[str, Any]]:
    import os
    import shutil
    import subprocess
    from pathlib import Path

    from sandboxer.config import Settings

    settings = Settings.from_env()
    out = []
    bwrap = shutil.which("bwrap")
    out.append(_check("bubblewrap", bwrap is not None, bwrap or "bwrap not on PATH",
                      "apt-get install bubblewrap"))
    max_ns = Path("/proc/sys/user/max_user_namespaces")
    n = int(max_ns.read_text()) if max_ns.exists() else 0
    out.append(_check("user namespaces", n > 0, f"user.max_user_namespaces = {n}",
                      "sysctl -w user.max_user_namespaces=15000"))
    clone = Path("/proc/sys/kernel/unprivileged_userns_clone")
    if clone.exists():
        v = clone.read_text().strip()
        out.append(_check("unprivileged user namespaces", v == "1",
                          f"kernel.unprivileged_userns_clone = {v}",
                          "sysctl -w kernel.unprivileged_userns_clone=1"))
    if bwrap:
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
        out.append(_check("jail", ok, detail,
                          "enable unprivileged user namespaces (see the checks above)"))
    from sandboxer.extensions.local import enforcement

    out += [_check(*c) for c in enforcement.report()]
    out.append(_permissions(settings))
    ssh = shutil.which("ssh")
    out.append(_check("ssh client", ssh is not None, ssh or "ssh not on PATH",
                      "apt-get install openssh-client"))
    try:
        settings.ensure()
        from sandboxer.store import open_store

        version = open_store(settings).schema_version()
        out.append(_check("state store", True, f"{settings.db_path} (schema {version})"))
    except Exception as e:
        out.append(_check("state store", False, f"{settings.db_path}: {e}",
                          "set SANDBOXER_HOME to a writable directory"))
    return out


def cmd_doctor(args: argparse.Namespace) -> int:
    from sandboxer.cli.output import emit_json, table

    results = checks()
    ok = all(c["ok"] for c in results)
    if args.json:
        emit_json({"schema": "sandboxer.doctor/v1", "ok": ok, "checks": results})
    else:
        print(table(["check", "ok", "detail", "fix"],
                    [[c["name"], "yes" if c["ok"] else "NO", c["detail"], c["fix"]]
                     for c in results]))
    return 0 if ok else 1
