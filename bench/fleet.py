"""A shared control plane under load: 200 creates through 4 `sandboxer serve` replicas on
one PostgreSQL database, from 20 concurrent clients, onto 3 docker hosts.

    python3 bench/fleet.py [--quick] [--creates N] [--clients N] [--replicas N]
                           [--json FILE]

The hosts are tests/fleet_support.py's (each a dockerd + sshd in its own network
namespace; needs root, dockerd, sshd, ip), added with `targets add` as h1, h2, h3 with
capacities 60, 70 and 80 (210 places for 200 sandboxes, so spread fills the hosts
unevenly and capacity binds); the database is SANDBOXER_TEST_DATABASE_URL's server or a
private one (tests/pg_support.py). The replicas share one home on this machine (keys,
the profile), as replicas on one machine would; the state is in PostgreSQL. Each client
sends its creates to one replica (client i to replica i mod 4), one after the other.

Prints the ready count (target: all of them), per host the live sandboxes the store
records and the containers the host's engine runs against its capacity (target: none
over), and create-to-ready p50/p99 and the wall time. Then destroys everything. Skips,
saying why, when a piece is missing; exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLI = shutil.which("sandboxer", path=os.path.dirname(sys.executable)) or "sandboxer"
CAPACITY = {"h1": 60, "h2": 70, "h3": 80}
# network_mode bridge: the engine's default bridge, not a network per compose project.
# dockerd's default address pools hold about 30 networks: the 31st project on an engine
# fails ("could not find an available, non-overlapping IPv4 address pool"); an operator
# who runs more sandboxes per host sets `default-address-pools` in daemon.json.
PROFILE = """\
id: profile.spread
extension: ext.compose-ssh
ttl: {{default: 30m, max: 2h}}
spec:
  service: main
  pull: never
  compose:
    services:
      main: {{image: "{image}", network_mode: bridge}}
reachability: {{user: agent}}
"""


def missing() -> str | None:
    """Why this benchmark cannot run here, or None."""
    if importlib.util.find_spec("tests.fleet_support") is None:
        return "tests/fleet_support.py (the docker hosts in network namespaces) is not here"
    if importlib.util.find_spec("sandboxer.store.postgres") is None:
        return "this build has no PostgreSQL store (sandboxer.store.postgres)"
    from tests import pg_support

    why = pg_support.available()
    if why is not None:
        return why
    if os.geteuid() != 0:
        return "the docker hosts in network namespaces need root"
    return None


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([CLI, *args], env=env, capture_output=True, text=True,
                          check=False, stdin=subprocess.DEVNULL, timeout=600)
    if done.returncode != 0:
        raise SystemExit(f"sandboxer {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


@contextlib.contextmanager
def replicas(env: dict[str, str], count: int, logs: Path) -> Iterator[list[str]]:
    """``count`` `sandboxer serve --port 0` processes over ``env``; their URLs."""
    procs: list[tuple[subprocess.Popen[bytes], Any]] = []
    urls: list[str] = []
    try:
        for i in range(count):
            log = logs / f"serve-{i}.log"
            out = log.open("wb")
            proc = subprocess.Popen([CLI, "serve", "--port", "0", "--grace", "60"], env=env,
                                    stdout=out, stderr=out, stdin=subprocess.DEVNULL)
            procs.append((proc, out))
            deadline = time.monotonic() + 120
            while not (m := re.search(r"serving (http://[\d.:]+)", log.read_text())):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"replica {i} did not start:\n{log.read_text()}")
                time.sleep(0.05)
            urls.append(m.group(1))
        yield urls
    finally:
        for proc, _out in procs:
            proc.send_signal(signal.SIGTERM)
        for proc, out in procs:
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
            out.close()


def load(urls: list[str], token: str, creates: int, clients: int) -> list[dict[str, Any]]:
    """``creates`` creates from ``clients`` threads; one result per create."""
    results: list[dict[str, Any]] = []
    lock = threading.Lock()
    per_client = [creates // clients + (1 if i < creates % clients else 0)
                  for i in range(clients)]

    def client(i: int) -> None:
        url = urls[i % len(urls)]
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                          timeout=600) as http:
            for _ in range(per_client[i]):
                t = time.perf_counter()
                try:
                    r = http.post("/v1/sandboxes", json={"profile": "profile.spread",
                                                         "ttl": "30m"})
                    doc = r.json()
                    status = r.status_code
                except (httpx.HTTPError, ValueError) as e:
                    doc, status = {"code": type(e).__name__, "message": str(e)}, 0
                elapsed = time.perf_counter() - t
                with lock:
                    results.append({"status": status, "seconds": elapsed, "replica": url,
                                    "state": doc.get("state"), "target": doc.get("target"),
                                    "id": doc.get("id"), "code": doc.get("code"),
                                    "message": doc.get("message")})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def destroy_all(url: str, token: str, ids: list[str], clients: int) -> None:
    pending = list(ids)
    lock = threading.Lock()

    def worker() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"},
                          timeout=600) as http:
            while True:
                with lock:
                    if not pending:
                        return
                    sid = pending.pop()
                with contextlib.suppress(httpx.HTTPError):
                    http.delete(f"/v1/sandboxes/{sid}")

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def run(args: argparse.Namespace, tmp: Path) -> tuple[dict[str, Any], bool]:
    from tests import pg_support
    from tests.fleet_support import fleet

    with fleet(3) as hosts, pg_support.server() as pg, pg.database() as url:
        print(f"3 docker hosts ready in {hosts.setup_seconds:.0f}s")
        profiles = tmp / "profiles"
        profiles.mkdir()
        (profiles / "spread.yaml").write_text(PROFILE.format(image=hosts.image))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
        env.update(SANDBOXER_HOME=str(tmp / "home"), SANDBOXER_PROFILES=str(profiles),
                   SANDBOXER_DATABASE_URL=url, HOME=str(tmp / "user"),
                   DOCKER_HOST=f"unix://{tmp}/no-engine-here.sock")  # `local`: unhealthy
        for name, capacity in CAPACITY.items():
            h = hosts[name]
            cli(env, "targets", "add", name, h.url, "--identity", str(h.identity_file),
                "--yes", "--capacity", str(capacity), "--json")
        token = cli(env, "tokens", "add", "bench", "--admin").strip()
        with replicas(env, args.replicas, tmp) as urls:
            started = time.perf_counter()
            results = load(urls, token, args.creates, args.clients)
            wall = time.perf_counter() - started
            with httpx.Client(base_url=urls[0], headers={"Authorization": f"Bearer {token}"},
                              timeout=120) as http:
                live = http.get("/v1/sandboxes").json()["items"]
            recorded = Counter(d["target"] for d in live)
            running = {name: len(hosts[name].docker("ps", "-q", "--filter",
                                                    "label=sandboxer.id").stdout.split())
                       for name in CAPACITY}
            ids = [d["id"] for d in live] + [r["id"] for r in results
                                             if r["id"] and r["state"] != "ready"]
            destroy_all(urls[0], token, ids, args.clients)
    ready = [r for r in results if r["status"] == 201 and r["state"] == "ready"]
    failed = Counter(f"{r['status']} {r['code']}" for r in results if r not in ready)
    times = [r["seconds"] for r in ready]
    over = {n: (recorded[n], running[n]) for n, cap in CAPACITY.items()
            if max(recorded[n], running[n]) > cap}
    figures = {"title": "bench/fleet.py: shared control plane (PostgreSQL, compose hosts)",
               "creates": args.creates, "ready": len(ready), "failed": dict(failed),
               "wall_s": round(wall, 1), "p50_s": round(pct(times, 50), 2) if times else None,
               "p99_s": round(pct(times, 99), 2) if times else None,
               "per_target": {n: {"capacity": c, "recorded": recorded[n],
                                  "running": running[n]} for n, c in CAPACITY.items()},
               "by_replica": dict(Counter(r["replica"] for r in ready)),
               "samples": {f"fleet create (API, {args.replicas} replicas, {args.clients} "
                           "clients, compose)": [round(t * 1000, 3) for t in times]}}
    ok = len(ready) == args.creates and not over
    print(f"{args.creates} creates through {args.replicas} replicas (PostgreSQL) from "
          f"{args.clients} clients onto 3 docker hosts, in {wall:.0f}s:")
    print(f"  {'PASS' if len(ready) == args.creates else 'FAIL'}  ready: "
          f"{len(ready)}/{args.creates}" + (f" (failed: {dict(failed)})" if failed else ""))
    shapes = {re.sub(r"sbx-[a-z0-9]{10}", "sbx-…", str(r["message"])): 1
              for r in results if r not in ready}
    for message in list(shapes)[:3]:
        print("        e.g. " + " | ".join(message.split("\n"))[:300])
    for n, cap in CAPACITY.items():
        print(f"  {'FAIL' if n in over else 'PASS'}  {n}: {recorded[n]} recorded, "
              f"{running[n]} containers running, capacity {cap}")
    if times:
        print(f"  create-to-ready p50 {figures['p50_s']:.2f} s, p99 {figures['p99_s']:.2f} s "
              f"({len(ready) / wall:.1f} creates/s)")
    return figures, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--creates", type=int, default=200)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--json", type=Path,
                        help="also write the figures and the raw samples (ms) here")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke: 12 creates from 4 clients through 2 replicas")
    args = parser.parse_args()
    if args.quick:
        args.creates, args.clients, args.replicas = 12, 4, 2
    why = missing()
    if why is not None:
        print(f"bench/fleet.py: skipped: {why}")
        return 0
    import pytest  # tests/fleet_support.py reports what it lacks as pytest outcomes

    tmp = Path(tempfile.mkdtemp(prefix="sbx-bench-fleet-"))
    try:
        figures, ok = run(args, tmp)
    except pytest.skip.Exception as e:
        print(f"bench/fleet.py: skipped: {e.msg}")
        return 0
    except pytest.fail.Exception as e:
        print(f"bench/fleet.py: could not set up: {e.msg}")
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
