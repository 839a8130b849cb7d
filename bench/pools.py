"""Warm pools: claim-to-ready through the HTTP API against a cold create, in one run.

    python3 bench/pools.py [--quick] [--rounds N] [--compose] [--json FILE]

`sandboxer serve` (one worker, SQLite, a fresh SANDBOXER_HOME) with an admin token; its
leader fills the pool of ``profile.bench-pool`` (ext.local, ``pool: {size: N}``) before
the rounds start. Each round, interleaved so the machine's other load falls on both
alike: ``POST /v1/sandboxes`` of ``profile.bench-pool`` (a claim: the answer is the
sandbox, ready) and of ``profile.bench-cold`` (the same spec without a pool: a cold
create), each followed by its DELETE. Every claimed sandbox must have been pooled.

Target: claim-to-ready median <= 30 ms (ext.local), printed with its ratio against the
cold create of the same run. The compose-ssh figure (<= 150 ms) is measured by the same
rounds (half as many, at least 3) with ``--compose`` against an engine (DOCKER_HOST, else
a private dockerd as bench/compose.py starts it; skipped, saying why, without one).
``--json FILE`` writes the figures and raw samples (ms).
Exit status 1 when a target is missed (not with ``--quick``).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from api import Serve, cli, fresh_env
from create_api import Api, leftovers
from figures import Check, median, ms, report, stop_services, write_json

LOCAL_SPEC = """extension: ext.local
ttl: {default: 30m, max: 2h}
spec:
  network: false
  limits: {processes: 256, memory: 2G, cpus: 2, disk: 10G, open_files: 1024}
reachability: {user: sandbox}
"""
LIMITS = {"ext.local": 30.0, "compose-ssh": 150.0}  # claim-to-ready targets, ms


def profiles(d: Path, spec: str, size: int) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "pool.yaml").write_text(f"id: profile.bench-pool\n{spec}"
                                 f"pool: {{size: {size}, max_age: 1h}}\n")
    (d / "cold.yaml").write_text(f"id: profile.bench-cold\n{spec}")


def pooled(api: Api, size: int, timeout: float = 300) -> set[str]:
    """The pool's sandboxes once ``size`` are ready."""
    deadline = time.monotonic() + timeout
    while True:
        status, doc = api.call("GET", "/v1/pools/profile.bench-pool")
        if status == 200 and doc["ready"] >= size:
            return {s["id"] for s in doc["sandboxes"] if s["state"] == "ready"}
        if time.monotonic() > deadline:
            raise SystemExit(f"the pool did not fill to {size} in {timeout:.0f} s: {doc}")
        time.sleep(0.05)


def post(api: Api, profile: str) -> tuple[float, dict[str, Any]]:
    t = time.perf_counter()
    status, doc = api.call("POST", "/v1/sandboxes", {"profile": profile, "ttl": "30m"})
    elapsed = time.perf_counter() - t
    if status != 201 or doc.get("state") != "ready":
        raise SystemExit(f"POST /v1/sandboxes {profile}: {status} {doc}")
    return elapsed, doc


def rounds(api: Api, n: int) -> dict[str, list[float]]:
    ready = pooled(api, n)
    s: dict[str, list[float]] = {"claim": [], "cold": []}
    for _ in range(n):
        tc, claimed = post(api, "profile.bench-pool")
        if claimed["id"] not in ready:
            raise SystemExit(f"{claimed['id']} was not claimed from the pool (cold?)")
        s["claim"].append(tc)
        tk, cold = post(api, "profile.bench-cold")
        s["cold"].append(tk)
        api.destroy(claimed["id"])
        api.destroy(cold["id"])
    return s


def measure(kind: str, spec: str, n: int, env_extra: dict[str, str]) -> dict[str, list[float]]:
    tmp = Path(tempfile.mkdtemp(prefix=f"sbx-bench-pools-{kind}-", dir="/var/tmp"))
    tmp.chmod(0o711)  # jail uids pass through, cannot list
    profiles(tmp / "profiles", spec, n)
    env = fresh_env(tmp / "home", SANDBOXER_PROFILES=str(tmp / "profiles"), **env_extra)
    token = cli(env, "tokens", "add", "bench", "--admin").strip()
    server = Serve(env, tmp / "serve.log")
    api = Api(server.url, token)
    try:
        post(api, "profile.bench-cold")  # a first create warms up what serve keeps
        return rounds(api, n)
    finally:
        leftovers(api)
        api.close()
        server.stop()
        stop_services([tmp / "home"])
        shutil.rmtree(tmp, ignore_errors=True)


def compose(rounds: int) -> dict[str, list[float]] | str:
    """The same rounds on ext.compose-ssh's local target; or why they were skipped."""
    import subprocess

    if shutil.which("docker") is None:
        return "no docker CLI"
    if subprocess.run(["docker", "compose", "version"], capture_output=True,
                      check=False).returncode != 0:
        return "no docker compose v2"
    from compose import ROOT, engine

    with tempfile.TemporaryDirectory(prefix="sbx-bench-pools-engine-", dir="/var/tmp") as t:
        try:
            host, started = engine(Path(t))
        except Exception as e:  # a machine without an engine skips it
            return f"no docker engine ({type(e).__name__}: {e})"
        try:
            built = subprocess.run(["bash", str(ROOT / "images/sandbox-base/build.sh"),
                                    "--docker-host", host], capture_output=True, text=True,
                                   check=True)
            image = built.stdout.strip().splitlines()[-1]
            spec = ("extension: ext.compose-ssh\nttl: {default: 30m, max: 2h}\n"
                    "spec: {service: main, pull: never, compose: {services: "
                    f"{{main: {{image: '{image}'}}}}}}}}\nreachability: {{user: agent}}\n")
            return measure("compose", spec, rounds, {"DOCKER_HOST": host})
        finally:
            if started is not None:
                infra, daemon, proc = started
                infra._stop_dockerd(daemon, proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke: few samples")
    parser.add_argument("--rounds", type=int, default=10, help="claims (and cold creates)")
    parser.add_argument("--json", type=Path, help="also write figures and samples here")
    parser.add_argument("--compose", action="store_true",
                        help="also ext.compose-ssh (an engine: DOCKER_HOST or a private one)")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 3
    if shutil.which("bwrap") is None:
        print("bench/pools.py: skipped: ext.local needs bubblewrap (apt-get install "
              "bubblewrap)")
        return 0
    runs: dict[str, dict[str, list[float]]] = {
        "ext.local": measure("local", LOCAL_SPEC, args.rounds, {})}
    done = compose(max(3, args.rounds // 2)) if args.compose else "not asked (--compose)"
    if isinstance(done, str):
        print(f"bench/pools.py: compose-ssh skipped: {done}")
    else:
        runs["compose-ssh"] = done
    checks, samples, medians = [], {}, {}
    for kind, s in runs.items():
        m = {k: median(v) * 1000 for k, v in s.items()}
        medians[kind] = {k: round(v, 2) for k, v in m.items()}
        checks.append(Check(f"{kind} claim-to-ready via the API (median of "
                            f"{len(s['claim'])})", m["claim"], m["cold"],
                            "cold create of the same spec", limit=LIMITS[kind],
                            series=f"{kind} claim (API)"))
        samples[f"{kind} claim (API)"] = ms(s["claim"])
        samples[f"{kind} cold create (API)"] = ms(s["cold"])
    ok = report("warm pools through the HTTP API (serve, 1 worker, SQLite)", checks)
    if args.json:
        write_json(args.json, {"title": "bench/pools.py: warm pools through the HTTP API",
                               "medians_ms": medians}, samples, checks)
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    raise SystemExit(main())
