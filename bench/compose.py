"""ext.compose-ssh against the raw tools, in one run.

    python3 bench/compose.py [--rounds N] [--json FILE]

Baseline: the same compose file brought up by hand on the same engine
(`docker compose up -d`, `docker compose port`, then the first successful `ssh … true`
with the system client, retried every 20 ms), and `docker compose down`. Measured against
it, in the same rounds (interleaved, so the machine's other load falls on all alike):

* in-process: `LocalClient.create(…, target="local")` to ready and `destroy`, in one warm
  process (`warm_up_all()` first, one client for every round), as `sandboxer serve` and
  the local service run them. Targets: create <= x1.10, destroy <= x1.10.
* CLI: `sandboxer create … --target local` to ready and `sandboxer destroy`. Targets
  <= x1.20. Until the CLI is a thin client of the warm local service, it pays the
  interpreter's start and the manager's imports on top of the in-process figure.

Pause and resume: ext.compose-ssh's ``pause``/``resume`` of one sandbox in the warm
process (the engine API: list the project's running containers, pause each) against the
raw `docker pause`/`unpause` CLI of the same container, interleaved. Targets <= x1.10.

Also 5 concurrent creates through the CLI on one target. Uses DOCKER_HOST when an engine
answers there, else starts a private dockerd (as the integration tests do). ``--json
FILE`` writes the figures, each check and the raw samples (ms) under ``"samples"``, which
bench/plot.py draws. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLI = shutil.which("sandboxer", path=os.path.dirname(sys.executable)) or "sandboxer"
PROFILE = "profile.bench-compose"
# (figure, series of samples, baseline series, max ratio)
TARGETS = (("create in-process", "compose in-process", "raw compose up + ssh", 1.10),
           ("create CLI", "compose CLI", "raw compose up + ssh", 1.20),
           ("destroy in-process", "destroy in-process", "raw compose down", 1.10),
           ("destroy CLI", "destroy CLI", "raw compose down", 1.20),
           ("pause in-process", "pause in-process", "raw docker pause", 1.10),
           ("resume in-process", "resume in-process", "raw docker unpause", 1.10))


def engine(tmp: Path) -> tuple[str, Any]:
    host = os.environ.get("DOCKER_HOST")
    if host and subprocess.run(["docker", "-H", host, "version"], capture_output=True,
                               check=False).returncode == 0:
        return host, None
    # The conftest imports tests.docker_support: the repository root goes on the path too.
    sys.path[:0] = [str(ROOT / "tests" / "integration" / "compose"), str(ROOT)]
    import conftest as infra  # the same coexisting dockerd the integration tests start

    daemon, proc = infra.start_dockerd()
    return daemon.host, (infra, daemon, proc)


@contextlib.contextmanager
def bench_home(prefix: str) -> Iterator[tuple[Path, dict[str, str], str]]:
    """A temporary directory, an environment naming a sandboxer home and a profiles
    directory in it on an engine (``engine``), and sandboxer/base built there: (the
    directory, the environment, the image). A dockerd it started is stopped after."""
    with tempfile.TemporaryDirectory(prefix=prefix, dir="/var/tmp") as tmp:
        d = Path(tmp)
        host, started = engine(d)
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
            env.update(DOCKER_HOST=host, SANDBOXER_HOME=str(d / "home"),
                       SANDBOXER_PROFILES=str(d / "profiles"))
            built = subprocess.run(["bash", str(ROOT / "images/sandbox-base/build.sh"),
                                    "--docker-host", host], capture_output=True, text=True,
                                   check=True)
            (d / "profiles").mkdir()
            yield d, env, built.stdout.strip().splitlines()[-1]
        finally:
            if started is not None:
                infra, daemon, proc = started
                infra._stop_dockerd(daemon, proc)


class ByHand:
    """The raw tools: a client key and a host key laid out as the image's entrypoint
    expects, bind-mounted; `up -d`, `port`, ssh until it answers; `down`."""

    def __init__(self, env: dict[str, str], d: Path, image: str) -> None:
        self.env, self.d = env, d
        etc = d / "etc"
        etc.mkdir(parents=True)
        for key in (d / "id", etc / "ssh_host_ed25519_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                           check=True)
        shutil.copy(d / "id.pub", etc / "authorized_keys")
        self.pub = " ".join((etc / "ssh_host_ed25519_key.pub").read_text().split()[:2])
        (d / "compose.yaml").write_text(
            f"services:\n  main:\n    image: {image}\n"
            "    environment: {SANDBOXER_USER: agent}\n"
            f"    ports: ['127.0.0.1::22']\n    volumes: ['{etc}:/etc/sandboxer:ro']\n")
        self.n = 0

    def round(self) -> tuple[float, float]:
        self.n += 1
        d = self.d
        base = ["docker", "compose", "-p", f"byhand{self.n}", "-f", str(d / "compose.yaml")]
        t = time.perf_counter()
        subprocess.run([*base, "up", "-d"], env=self.env, check=True, capture_output=True)
        port = subprocess.run([*base, "port", "main", "22"], env=self.env, check=True,
                              capture_output=True, text=True).stdout.strip().rsplit(":", 1)[1]
        (d / "known").write_text(f"[127.0.0.1]:{port} {self.pub}\n")
        ssh = ["ssh", "-i", str(d / "id"), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
               "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={d / 'known'}",
               "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "-p", port,
               "agent@127.0.0.1", "true"]
        while subprocess.run(ssh, capture_output=True, check=False).returncode != 0:
            time.sleep(0.02)
        up = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run([*base, "down", "-v", "--remove-orphans", "-t", "5"], env=self.env,
                       check=True, capture_output=True)
        return up, time.perf_counter() - t


def cli_round(env: dict[str, str]) -> tuple[float, float]:
    t = time.perf_counter()
    done = subprocess.run([CLI, "create", PROFILE, "--target", "local", "--json", "--quiet"],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    up = time.perf_counter() - t
    sid = json.loads(done.stdout)["id"]
    t = time.perf_counter()
    subprocess.run([CLI, "destroy", sid], env=env, check=True, capture_output=True)
    return up, time.perf_counter() - t


class InProcess:
    """LocalClient in this process, warm as a long-lived one is: extensions warmed up,
    one client (one Manager) for every round. Records the time before each progress line."""

    def __init__(self, env: dict[str, str]) -> None:
        sys.path.insert(0, str(ROOT / "src"))
        from sandboxer.client.local import LocalClient
        from sandboxer.config import Settings
        from sandboxer.extensions.base import warm_up_all

        warm_up_all()
        self.marks: list[tuple[str, float]] = []
        self.client = LocalClient(Settings.from_env(env), progress=self._mark)
        self.phases: dict[str, list[float]] = {}

    def _mark(self, message: str) -> None:
        self.marks.append((message, time.perf_counter()))

    def round(self) -> tuple[float, float]:
        self.marks.clear()
        start = time.perf_counter()
        sid = self.client.create(PROFILE, target="local").id
        end = time.perf_counter()
        last = start
        for message, at in [*self.marks, ("ready", end)]:
            phase = message.split(": ", 1)[-1].split(" on ")[0]
            self.phases.setdefault(phase, []).append(at - last)
            last = at
        t = time.perf_counter()
        self.client.destroy(sid)
        return end - start, time.perf_counter() - t


def pause_rounds(warm: InProcess, env: dict[str, str], rounds: int,
                 samples: dict[str, list[float]]) -> None:
    """One sandbox paused and resumed by the extension, then by the docker CLI, in turn."""
    import asyncio

    from sandboxer.extensions.compose_ssh.extension import ComposeSSHExtension

    sid = warm.client.create(PROFILE, target="local").id
    manager = warm.client.manager
    ext = manager.extension("ext.compose-ssh")
    assert isinstance(ext, ComposeSSHExtension)
    handle = next(h for h in manager.store.live_handles(ext.name) if h.sandbox_id == sid)
    cid = handle.data["container"]
    loop = asyncio.new_event_loop()  # one loop for every round, as a long-lived process
    try:
        for n in range(rounds + 1):  # the first round unmeasured
            timed = {}
            for name, step in (("pause in-process", lambda: loop.run_until_complete(
                                    ext.pause(handle))),
                               ("resume in-process", lambda: loop.run_until_complete(
                                    ext.resume(handle))),
                               ("raw docker pause", lambda: subprocess.run(
                                    ["docker", "pause", cid], env=env, check=True,
                                    capture_output=True)),
                               ("raw docker unpause", lambda: subprocess.run(
                                    ["docker", "unpause", cid], env=env, check=True,
                                    capture_output=True))):
                t = time.perf_counter()
                step()
                timed[name] = round((time.perf_counter() - t) * 1000, 3)
            if n:
                for name, value in timed.items():
                    samples[name].append(value)
    finally:
        loop.close()
        warm.client.destroy(sid)


def concurrent(env: dict[str, str], n: int) -> dict[str, Any]:
    def one(_: int) -> tuple[int, str]:
        done = subprocess.run([CLI, "create", PROFILE, "--target", "local", "--json",
                               "--quiet"], env=env, capture_output=True, text=True, check=False)
        return done.returncode, done.stdout if done.returncode == 0 else done.stderr

    t = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - t
    ids = [json.loads(out)["id"] for rc, out in results if rc == 0]
    if ids:
        subprocess.run([CLI, "destroy", *ids], env=env, check=True, capture_output=True)
    return {"concurrent_creates": n, "succeeded": len(ids), "wall_s": round(elapsed, 2)}


def checks(samples: dict[str, list[float]]) -> list[dict[str, Any]]:
    out = []
    for what, series, base, max_ratio in TARGETS:
        value, baseline = statistics.median(samples[series]), statistics.median(samples[base])
        ratio = value / baseline
        out.append({"what": what, "value": round(value, 1), "baseline": round(baseline, 1),
                    "baseline_what": base, "max_ratio": max_ratio, "ratio": round(ratio, 3),
                    "overhead_pct": round((ratio - 1) * 100, 1),
                    "passed": ratio <= max_ratio})
    return out


def line(c: dict[str, Any]) -> str:
    verdict = "PASS" if c["passed"] else "FAIL"
    return (f"  {verdict}  {c['what']:<20} {c['value']:8.1f} ms   baseline {c['baseline']:7.1f}"
            f" ms ({c['baseline_what']})   x{c['ratio']:.2f} ({c['overhead_pct']:+.0f} %)"
            f"   target <= x{c['max_ratio']:g}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", type=Path, help="also write figures and samples to this file")
    args = ap.parse_args()
    samples: dict[str, list[float]] = {
        name: [] for name in ("raw compose up + ssh", "compose in-process", "compose CLI",
                              "raw compose down", "destroy in-process", "destroy CLI",
                              "pause in-process", "resume in-process", "raw docker pause",
                              "raw docker unpause")}
    with bench_home("sbx-bench-compose-") as (d, env, image):
        env["SANDBOXER_SERVICE_IDLE_EXIT"] = "15"  # the CLI's service, if any
        (d / "profiles" / "bench.yaml").write_text(
            f"id: {PROFILE}\nextension: ext.compose-ssh\n"
            "spec: {service: main, pull: never, compose: {services: "
            f"{{main: {{image: '{image}'}}}}}}}}\nreachability: {{user: agent}}\n")
        hand, warm = ByHand(env, d / "hand", image), InProcess(env)
        runs = (("raw compose up + ssh", "raw compose down", hand.round),
                ("compose in-process", "destroy in-process", warm.round),
                ("compose CLI", "destroy CLI", lambda: cli_round(env)))
        for _, _, run in runs:  # one unmeasured round each: caches, page cache
            run()
        warm.phases.clear()
        for _ in range(args.rounds):
            for up_name, down_name, run in runs:
                up, down = run()
                samples[up_name].append(round(up * 1000, 3))
                samples[down_name].append(round(down * 1000, 3))
        phases = {k: round(statistics.median(v) * 1000, 1) for k, v in warm.phases.items()}
        pause_rounds(warm, env, max(args.rounds, 5) * 3, samples)
        extra = concurrent(env, 5)
    found = checks(samples)
    print(f"\n== compose-ssh (local target, {args.rounds} rounds, medians)")
    for c in found:
        print(line(c))
    print("  in-process create, ms before each progress line: "
          + ", ".join(f"{k} {v}" for k, v in phases.items()))
    ok = extra["succeeded"] == extra["concurrent_creates"]
    print(f"  {'PASS' if ok else 'FAIL'}  {extra['concurrent_creates']} concurrent CLI creates:"
          f" {extra['succeeded']} ready in {extra['wall_s']} s   target all ready")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"phases_ms": phases, **extra, "checks": found,
                                         "samples": samples}, indent=2) + "\n")
    return 0 if ok and all(c["passed"] for c in found) else 1


if __name__ == "__main__":
    raise SystemExit(main())
