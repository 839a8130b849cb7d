"""Fork of an ext.compose-ssh sandbox against a raw `docker commit` of the same container.

    python3 bench/fork_compose.py [--rounds N] [--quick] [--json FILE]

One sandbox on the local target (the engine's API where it is a unix socket), its main
container's own filesystem holding ``--layer-mib`` of data and its named volume (the home
directory) ``--volume-mib``, running, made once. Then, interleaved round by round:

* baseline: `docker commit` of its main container (the CLI; the image removed after);
* snapshot: the manager's ``snapshot`` of it in a warm process (records it; ext.compose-ssh
  pauses the project, commits with the configuration reset, copies and hashes the
  volume, unpauses); deleted after, untimed;
* fork: the manager's ``fork`` (that snapshot + a create from it to ready: SSH answers);
  the fork destroyed and its snapshot deleted after, untimed.

The figures are ratios against the baseline of the same rounds; a fork does much more
than a commit (a volume copy, a new project up, sshd ready), so its ratio is reported,
not judged. The snapshot alone has a target. bench/fork.py runs it as ext.compose-ssh's
part (``make bench``); runnable alone too. Uses DOCKER_HOST when an engine answers there,
else starts a private dockerd as the integration tests do (bench/compose.py's ``engine``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT / "src")]

from compose import bench_home  # noqa: E402 - the engine and home bench/compose.py uses
from figures import Check, median, report, write_json  # noqa: E402

PROFILE = "profile.bench-fork-compose"
SNAPSHOT_MAX_RATIO = 8.0  # pause + commit + a helper container that copies and hashes the volume


class Forker:
    """The warm process: one client, the source sandbox, the extension."""

    def __init__(self, env: dict[str, str]) -> None:
        from sandboxer.client.local import LocalClient
        from sandboxer.config import Settings
        from sandboxer.extensions.base import warm_up_all
        from sandboxer.extensions.compose_ssh.extension import ComposeSSHExtension

        warm_up_all()
        self.env = env
        self.client = LocalClient(Settings.from_env(env))
        self.manager = self.client.manager
        ext = self.manager.extension("ext.compose-ssh")
        assert isinstance(ext, ComposeSSHExtension)
        self.ext = ext
        self.loop = asyncio.new_event_loop()
        self.sid = self.loop.run_until_complete(self.manager.create(PROFILE, target="local")).id
        self.handle = next(h for h in self.manager.store.live_handles(ext.name)
                           if h.sandbox_id == self.sid)

    def ssh(self, command: str) -> None:
        import shlex

        reach = self.client.get(self.sid).document()["reachability"]
        subprocess.run([*shlex.split(reach["ssh_command"]), "-o", "BatchMode=yes", "--",
                        command], check=True, capture_output=True, stdin=subprocess.DEVNULL)

    def raw_commit(self, n: int) -> float:
        tag = f"bench-raw-commit:{n}"
        t = time.perf_counter()
        subprocess.run(["docker", "commit", "--", self.handle.data["container"], tag],
                       env=self.env, check=True, capture_output=True)
        took = time.perf_counter() - t
        subprocess.run(["docker", "image", "rm", tag], env=self.env, check=True,
                       capture_output=True)
        return took

    def snapshot(self) -> float:
        t = time.perf_counter()
        snap = self.loop.run_until_complete(self.manager.snapshot(self.sid))
        took = time.perf_counter() - t
        self.loop.run_until_complete(self.manager.delete_snapshot(snap.id))
        return took

    def fork(self) -> float:
        t = time.perf_counter()
        made = self.loop.run_until_complete(self.manager.fork(self.sid))
        took = time.perf_counter() - t
        self.loop.run_until_complete(self.manager.destroy(made.id))
        if made.snapshot:
            self.loop.run_until_complete(self.manager.delete_snapshot(made.snapshot))
        return took

    def close(self) -> None:
        self.loop.run_until_complete(self.manager.destroy(self.sid))
        self.loop.close()


def unavailable() -> str | None:
    """Why no compose fork can be measured here, or None."""
    import shutil

    if shutil.which("docker") is None:
        return "no docker CLI (apt-get install docker.io)"
    if subprocess.run(["docker", "compose", "version"], capture_output=True,
                      check=False).returncode != 0:
        return "no docker compose v2 (scripts/deps.sh install_compose_plugin)"
    host = os.environ.get("DOCKER_HOST")
    if host and subprocess.run(["docker", "version"], capture_output=True,
                               check=False).returncode == 0:
        return None
    if shutil.which("dockerd") is None or os.geteuid() != 0:
        return "no engine answers at DOCKER_HOST and dockerd cannot be started (needs root)"
    return None


def run(rounds: int, layer_mib: int, volume_mib: int) -> tuple[dict[str, Any], list[Check],
                                                               dict[str, list[float]]]:
    samples: dict[str, list[float]] = {"raw docker commit": [], "compose snapshot": [],
                                       "compose fork": []}
    with bench_home("sbx-bench-fork-") as (d, env, image):
        (d / "profiles" / "bench.yaml").write_text(json.dumps({
            "id": PROFILE, "extension": "ext.compose-ssh",
            "reachability": {"user": "agent"},
            "spec": {"service": "main", "pull": "never", "compose": {
                "services": {"main": {"image": image, "volumes": ["data:/home/agent"]}},
                "volumes": {"data": {}}}}}))
        os.environ.update(env)  # the in-process client reads settings from here too
        warm = Forker(env)
        try:
            warm.ssh(f"mkdir -p /tmp/work && head -c {layer_mib << 20} /dev/urandom "
                     f"> /tmp/work/layer && head -c {volume_mib << 20} /dev/urandom "
                     "> ~/blob")
            warm.raw_commit(0)  # one unmeasured round each: caches
            warm.snapshot()
            warm.fork()
            for n in range(1, rounds + 1):
                samples["raw docker commit"].append(round(warm.raw_commit(n) * 1000, 3))
                samples["compose snapshot"].append(round(warm.snapshot() * 1000, 3))
                samples["compose fork"].append(round(warm.fork() * 1000, 3))
        finally:
            warm.close()
    base = median(samples["raw docker commit"])
    checks = [
        Check("compose snapshot (pause, commit, volume copy)",
              median(samples["compose snapshot"]), base, "raw docker commit",
              max_ratio=SNAPSHOT_MAX_RATIO, series="compose snapshot"),
        Check("compose fork to ready (snapshot + create)", median(samples["compose fork"]), base,
              "raw docker commit", series="compose fork"),
    ]
    return {"layer_mib": layer_mib, "volume_mib": volume_mib, "rounds": rounds}, checks, \
        samples


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="2 rounds, 8 MiB each, not judged")
    ap.add_argument("--layer-mib", type=int, default=64)
    ap.add_argument("--volume-mib", type=int, default=64)
    ap.add_argument("--json", type=Path, help="also write figures and samples to this file")
    args = ap.parse_args()
    rounds, layer, volume = ((2, 8, 8) if args.quick
                             else (args.rounds, args.layer_mib, args.volume_mib))
    results, checks, samples = run(rounds, layer, volume)
    ok = report(f"fork of a compose sandbox ({layer} MiB layer, {volume} MiB volume, "
                f"{rounds} rounds, medians)", checks)
    if args.json:
        write_json(args.json, results, samples, checks)
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    raise SystemExit(main())
