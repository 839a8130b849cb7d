"""Fork of a sandbox with a 1 GiB workspace, against a plain copy of the same data.

    python3 bench/fork.py [--quick] [--json FILE]

ext.local: one sandbox (profile.local, a fresh SANDBOXER_HOME under /var/tmp) whose
/workspace holds 1 GiB of incompressible data in 64 files. Each round forks it through the
manager (``Manager.fork``: a snapshot — the workspace image frozen and copied, reflink
where the filesystem allows, else a sparse copy, then hashed — and a create from it: its
own copy of the image, its files handed to its uid, keys, endpoint, SSH ready), and times
``Manager.snapshot`` alone; the baseline is ``cp -a`` of the same workspace tree to a
directory on the same filesystem, run in turn with each sample under the same load, its
page cache as warm. The fork and its snapshot are removed between rounds (not timed).
Medians. Needs root (workspace images).

ext.compose-ssh (bench/fork_compose.py): a compose sandbox with 64 MiB in its layer and 64
MiB in its volume, forked and snapshotted through the manager, against a raw `docker
commit` of the same container; skipped where no engine answers or can be started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from figures import Check, median, ms, report, stop_services, write_json

DATA_FILES = 64
DATA_MIB = 1024


def _ssh(reach: dict[str, Any], command: str, timeout: float = 300) -> None:
    subprocess.run([*shlex.split(reach["ssh_command"]), "-o", "BatchMode=yes", "--",
                    command], check=True, capture_output=True, stdin=subprocess.DEVNULL,
                   timeout=timeout)


async def local_rounds(rounds: int, mib: int) -> dict[str, list[float]]:
    from sandboxer.config import Settings
    from sandboxer.manager import Manager

    out: dict[str, list[float]] = {k: [] for k in ("fork", "snapshot", "baseline_cp")}
    with tempfile.TemporaryDirectory(prefix="sbx-bench-fork-", dir="/var/tmp") as d:
        home = Path(d) / "home"
        os.chmod(d, 0o711)  # noqa: S103 - jail uids pass through, cannot list
        env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
        env.update(SANDBOXER_HOME=str(home), SANDBOXER_LOCAL_IDLE_EXIT="30")
        manager = Manager(Settings.from_env(env))
        try:
            sb = await manager.create("profile.local", ttl="30m")
            assert sb.reachability is not None
            each = max(1, mib // DATA_FILES)
            await asyncio.to_thread(
                _ssh, sb.reachability.model_dump(mode="json"),
                f"for i in $(seq {DATA_FILES}); do head -c {each}M /dev/urandom > d$i; done")
            workspace = manager.settings.local_root / sb.id / "workspace"
            copy = Path(d) / "copy"
            for _ in range(rounds):
                t = time.perf_counter()
                subprocess.run(["cp", "-a", "--", str(workspace), str(copy)], check=True)
                out["baseline_cp"].append(time.perf_counter() - t)
                shutil.rmtree(copy)
                t = time.perf_counter()
                fork = await manager.fork(sb.id, ttl="10m")
                out["fork"].append(time.perf_counter() - t)
                await manager.destroy(fork.id)
                if fork.snapshot:
                    await manager.delete_snapshot(fork.snapshot)
                t = time.perf_counter()
                snap = await manager.snapshot(sb.id)
                out["snapshot"].append(time.perf_counter() - t)
                await manager.delete_snapshot(snap.id)
            await manager.destroy(sb.id)
        finally:
            stop_services([home])
    return out


Part = tuple[dict[str, list[float]], list[Check]]


def local_part(quick: bool) -> Part:
    """ext.local's samples and figures (nothing without root)."""
    if os.geteuid() != 0:
        print("bench/fork.py: ext.local skipped: its snapshots need workspace images (root)")
        return {}, []
    samples = asyncio.run(local_rounds(1 if quick else 5, 64 if quick else DATA_MIB))
    med = {k: median(v) * 1000 for k, v in samples.items()}
    size = "64 MiB" if quick else "1 GiB"
    return {f"local_{k}": v for k, v in samples.items()}, [
        Check(f"ext.local fork, {size} workspace (median)", med["fork"], med["baseline_cp"],
              "cp -a of the workspace", series="local_fork"),
        Check(f"ext.local snapshot, {size} workspace (median)", med["snapshot"],
              med["baseline_cp"], "cp -a of the workspace", series="local_snapshot"),
    ]


def compose_part(quick: bool) -> Part:
    """ext.compose-ssh's samples and figures (bench/fork_compose.py: a fork and a snapshot
    of a compose sandbox against a raw `docker commit` of the same container), when an
    engine answers at DOCKER_HOST or dockerd can be started."""
    import fork_compose

    why = fork_compose.unavailable()
    if why:
        print(f"bench/fork.py: ext.compose-ssh skipped: {why}")
        return {}, []
    rounds, mib = (2, 8) if quick else (5, 64)
    _, checks, samples = fork_compose.run(rounds, mib, mib)
    return {k: [x / 1000 for x in v] for k, v in samples.items()}, checks  # ms -> s


PARTS = [local_part, compose_part]  # each extension's part, in turn


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round of 64 MiB (CI smoke)")
    ap.add_argument("--json", type=Path, help="also write the figures and samples here")
    args = ap.parse_args()
    samples: dict[str, list[float]] = {}
    checks: list[Check] = []
    for part in PARTS:
        more, figures = part(args.quick)
        samples.update(more)
        checks += figures
    ok = report("fork and snapshot against a plain copy of the same data", checks)
    if args.json and samples:
        medians = {k: round(median(v) * 1000, 3) for k, v in samples.items()}
        write_json(args.json, {"title": "bench/fork.py: fork and snapshot against a copy",
                               "medians_ms": medians},
                   {k: ms(v) for k, v in samples.items()}, checks)
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
