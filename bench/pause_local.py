"""ext.local pause and resume latency, against a bare freezer write made in the same run.

    python3 bench/pause_local.py [--quick] [--json FILE]

One ext.local sandbox (a fresh SANDBOXER_HOME under /var/tmp) runs a counter; each
round pauses it and resumes it through the extension (``Pauses.pause`` / ``resume``, over
the endpoint's control socket, as a caller that is not the endpoint's process does: the
keeper's own idle handling calls the endpoint directly and pays less). The baseline is
the kernel's part alone: a cgroup of our own made now in the same freezer hierarchy
(v1 ``freezer.state``, v2 ``cgroup.freeze``) holding one such process, frozen and thawed
by a bare write and a wait for the kernel to confirm it. Medians; each sample's pause and
its baseline run in turn, under the same load. Needs root (cgroups).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from figures import Check, median, ms, report, stop_services, write_json

# A process that wakes every 10 ms (a counter): both cgroups hold a task to freeze, and
# neither load competes with the endpoint for the CPU (a busy loop on a shared machine
# would time the scheduler, not the freezer).
BUSY = "i=0; while :; do i=$((i+1)); sleep 0.01; done"


class BareFreezer:
    """A cgroup of our own in the sandboxes' freezer hierarchy, one such process in it."""

    def __init__(self) -> None:
        from sandboxer.extensions.local import cgroups

        hierarchy = cgroups.detect()
        if hierarchy is None:
            raise SystemExit("bench/pause_local.py: no cgroup hierarchy (run as root)")
        parent = hierarchy.parents.get("freezer" if hierarchy.version == 1 else "memory")
        if parent is None:
            raise SystemExit("bench/pause_local.py: no freezer cgroup on this host")
        self.version = hierarchy.version
        self.dir = parent / f"bench-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir()
        self.file = self.dir / ("freezer.state" if self.version == 1 else "cgroup.freeze")
        self.proc = subprocess.Popen(["sh", "-c", BUSY])
        (self.dir / "cgroup.procs").write_text(str(self.proc.pid))

    def set(self, frozen: bool) -> float:
        """Seconds from the write until the kernel says it is done."""
        if self.version == 1:
            value = "FROZEN" if frozen else "THAWED"
            t = time.perf_counter()
            self.file.write_text(value)
            while self.file.read_text().strip() != value:
                self.file.write_text(value)
        else:
            want, events = f"frozen {int(frozen)}", self.dir / "cgroup.events"
            t = time.perf_counter()
            self.file.write_text("1" if frozen else "0")
            while want not in events.read_text().splitlines():
                pass
        return time.perf_counter() - t

    def close(self) -> None:
        if self.version == 1:
            self.file.write_text("THAWED")
        else:
            self.file.write_text("0")
        self.proc.kill()
        self.proc.wait()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                self.dir.rmdir()
                return
            except OSError:
                time.sleep(0.02)


async def rounds_of(ext: Any, handle: Any, bare: BareFreezer,
                    rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in ("pause", "resume", "baseline_freeze",
                                                   "baseline_thaw")}
    for _ in range(rounds):
        out["baseline_freeze"].append(bare.set(True))
        t = time.perf_counter()
        await ext.pause(handle)
        out["pause"].append(time.perf_counter() - t)
        out["baseline_thaw"].append(bare.set(False))
        t = time.perf_counter()
        await ext.resume(handle)
        out["resume"].append(time.perf_counter() - t)
    return out


def measure(rounds: int) -> dict[str, list[float]]:
    from sandboxer.client.local import LocalClient
    from sandboxer.config import Settings
    from sandboxer.extensions.base import Handle
    from sandboxer.manager import Manager

    with tempfile.TemporaryDirectory(prefix="sbx-bench-pause-", dir="/var/tmp") as d:
        home = Path(d) / "home"
        os.chmod(d, 0o711)  # noqa: S103 - jail uids pass through, cannot list
        env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
        env.update(SANDBOXER_HOME=str(home), SANDBOXER_LOCAL_IDLE_EXIT="30")
        settings = Settings.from_env(env)
        client = LocalClient(settings)
        bare = BareFreezer()
        try:
            doc = client.create("profile.local", ttl="10m").document()
            reach = doc["reachability"]
            import shlex

            subprocess.run([*shlex.split(reach["ssh_command"]), "-o", "BatchMode=yes", "--",
                            f"nohup sh -c '{BUSY}' >/dev/null 2>&1 &"], check=True,
                           capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
            ext = Manager(settings).extension("ext.local")
            handle = Handle(sandbox_id=doc["id"], extension="ext.local", target="local")
            samples = asyncio.run(rounds_of(ext, handle, bare, rounds))
            client.destroy(doc["id"])
        finally:
            bare.close()
            stop_services([home])
    return samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 rounds (CI smoke)")
    ap.add_argument("--json", type=Path, help="also write the figures and samples here")
    args = ap.parse_args()
    samples = measure(5 if args.quick else 40)
    med = {k: median(v) * 1000 for k, v in samples.items()}
    checks = [
        Check("ext.local pause (median)", med["pause"], med["baseline_freeze"],
              "bare freezer write", limit=25.0, series="pause"),
        Check("ext.local resume (median)", med["resume"], med["baseline_thaw"],
              "bare freezer write", limit=25.0, series="resume"),
    ]
    ok = report("ext.local pause / resume", checks)
    if args.json:
        write_json(args.json, {"title": "bench/pause_local.py: ext.local pause and resume",
                               "medians_ms": {k: round(v, 3) for k, v in med.items()}},
                   {k: ms(v) for k, v in samples.items()}, checks)
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    sys.exit(main())
