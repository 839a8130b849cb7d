"""ext.local create-to-ready through the HTTP API, one at a time and in a burst, every
figure against a baseline measured in the same run.

    python3 bench/create_api.py [--quick] [--json FILE] [--rounds N] [--burst N]
                                [--clients N]

`sandboxer serve` (one worker, SQLite, a fresh SANDBOXER_HOME) with an admin token made by
`sandboxer tokens add`; every request goes over a keep-alive HTTP/1.1 connection
(http.client) with that bearer token. A first create starts the ext.local endpoint and is
not counted. ``POST /v1/sandboxes`` answers once the sandbox is ready; were it to answer
earlier (``provisioning``), the sandbox is polled with GET until ready and the time runs
to that answer.

1. Create-to-ready, ``--rounds`` (15) creates one after the other, each followed by its
   DELETE (target: median <= 25 ms). Baseline, in the same rounds: an authenticated
   ``GET /v1/sandboxes/{id}`` over the same connection + bare ``bwrap ... true`` + one
   in-process asyncssh round trip (connect with the key and pinned host key, run ``true``)
   to an existing sandbox -- the API's floor, a jail's start and the readiness probe.
2. A burst: ``--burst`` (100) creates from ``--clients`` (10) threads at once, each on
   its own keep-alive connection, the sandboxes kept until all are made
   (SANDBOXER_LOCAL_CAPACITY=128 here; the default is 64). Targets: every one ready, p99
   <= 2x p50; p50/p90/p99 and the wall time are printed, p50 against 1.'s median.

Everything created is destroyed. ``--json FILE`` writes figures, checks and raw samples
(ms) for bench/plot.py. Exit status 1 when a target is missed (not with ``--quick``, a
smoke that everything runs: 3 rounds, a burst of 20 from 5 clients).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from api import Serve, cli, fresh_env
from figures import BWRAP, Check, median, ms, percentile, report, stop_services, write_json

BODY = {"profile": "profile.local", "ttl": "30m"}


class Api:
    """One keep-alive connection to `sandboxer serve`, with the bearer token."""

    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1",
                                               parts.port or 80, timeout=300)
        self.headers = {"Authorization": f"Bearer {token}",
                        "Content-Type": "application/json"}

    def call(self, method: str, path: str,
             body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        try:
            return self._call(method, path, body)
        except (http.client.RemoteDisconnected, ConnectionError):
            if method == "POST":
                raise  # it may have been done: never twice
            self.conn.close()  # the server closed an idle keep-alive connection
            return self._call(method, path, body)

    def _call(self, method: str, path: str,
              body: dict[str, Any] | None) -> tuple[int, dict[str, Any]]:
        self.conn.request(method, path, body=None if body is None else json.dumps(body),
                          headers=self.headers)
        answer = self.conn.getresponse()
        data = answer.read()
        return answer.status, json.loads(data) if data else {}

    def create(self) -> tuple[float, dict[str, Any]]:
        """Seconds from the POST to an answer that says ready (or failed), and that answer."""
        t = time.perf_counter()
        status, doc = self.call("POST", "/v1/sandboxes", BODY)
        while status in (200, 201, 202) and doc.get("state") == "provisioning":
            time.sleep(0.002)
            status, doc = self.call("GET", f"/v1/sandboxes/{doc['id']}")
        elapsed = time.perf_counter() - t
        return elapsed, doc if status in (200, 201, 202) else {"state": "error", **doc}

    def destroy(self, sid: str) -> float:
        t = time.perf_counter()
        status, doc = self.call("DELETE", f"/v1/sandboxes/{sid}")
        if status != 200:
            raise SystemExit(f"DELETE /v1/sandboxes/{sid}: {status} {doc}")
        return time.perf_counter() - t

    def close(self) -> None:
        self.conn.close()


class SshRoundTrip:
    """An in-process asyncssh round trip to a ready sandbox, as serve's readiness probe
    makes it (extensions/_ssh.py): connect, pinned host key, run ``true``, close."""

    def __init__(self, reach: dict[str, Any]) -> None:
        import asyncssh

        self.asyncssh = asyncssh
        self.loop = asyncio.new_event_loop()
        self.reach = reach

    async def _once(self) -> None:
        r = self.reach
        known = self.asyncssh.import_known_hosts(r["known_hosts"] + "\n")
        async with self.asyncssh.connect(
            r["host"], r["port"], username=r["user"], client_keys=[r["identity_file"]],
            known_hosts=known, agent_path=None, config=None,
        ) as conn:
            await conn.run("true", check=True)

    def once(self) -> float:
        t = time.perf_counter()
        self.loop.run_until_complete(self._once())
        return time.perf_counter() - t

    def close(self) -> None:
        self.loop.close()


def sequential(api: Api, warm: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    s: dict[str, list[float]] = {k: [] for k in ("get", "bwrap", "ssh", "baseline",
                                                 "create", "destroy")}
    ssh = SshRoundTrip(warm["reachability"])
    try:
        for _ in range(rounds):
            t = time.perf_counter()
            status, _doc = api.call("GET", f"/v1/sandboxes/{warm['id']}")
            tg = time.perf_counter() - t
            assert status == 200, status
            t = time.perf_counter()
            subprocess.run(BWRAP, check=True, capture_output=True, stdin=subprocess.DEVNULL)
            tb = time.perf_counter() - t
            ts = ssh.once()
            for key, value in (("get", tg), ("bwrap", tb), ("ssh", ts),
                               ("baseline", tg + tb + ts)):
                s[key].append(value)
            tc, doc = api.create()
            if doc.get("state") != "ready":
                raise SystemExit(f"create through the API did not get ready: {doc}")
            s["create"].append(tc)
            s["destroy"].append(api.destroy(doc["id"]))
    finally:
        ssh.close()
    return s


def burst(url: str, token: str, total: int, clients: int) -> dict[str, Any]:
    """``total`` creates from ``clients`` threads at once; their times and ids."""
    start = threading.Barrier(clients)
    share = [total // clients + (i < total % clients) for i in range(clients)]

    def client(n: int) -> list[tuple[float, dict[str, Any]]]:
        api = Api(url, token)
        try:
            api.call("GET", "/v1/whoami")  # connected before the start
            start.wait()
            return [api.create() for _ in range(n)]
        finally:
            api.close()

    t = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        runs = [r for rs in pool.map(client, share) for r in rs]
    wall = time.perf_counter() - t
    ready = [doc["id"] for _t, doc in runs if doc.get("state") == "ready"]
    failed = [doc for _t, doc in runs if doc.get("state") != "ready"]
    return {"times": [t for t, doc in runs if doc.get("state") == "ready"],
            "ids": ready, "failed": failed, "wall": wall}


def destroy_all(url: str, token: str, ids: list[str], clients: int) -> list[float]:
    def part(chunk: list[str]) -> list[float]:
        api = Api(url, token)
        try:
            return [api.destroy(sid) for sid in chunk]
        finally:
            api.close()

    with ThreadPoolExecutor(clients) as pool:
        return [t for ts in pool.map(part, [ids[i::clients] for i in range(clients)])
                for t in ts]


def leftovers(api: Api) -> None:
    """Destroy whatever is still live (a run that stopped half way)."""
    with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
        api.close()  # a fresh connection: the last request may have broken this one
        _status, doc = api.call("GET", "/v1/sandboxes")
        for item in doc.get("items", []):
            api.destroy(item["id"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke: few samples")
    parser.add_argument("--json", type=Path, help="also write figures and samples here")
    parser.add_argument("--rounds", type=int, default=15, help="sequential creates")
    parser.add_argument("--burst", type=int, default=100, help="creates in the burst")
    parser.add_argument("--clients", type=int, default=10, help="concurrent clients")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.burst, args.clients = 3, 20, 5
    if shutil.which("bwrap") is None:
        print("bench/create_api.py: skipped: the sandboxes are ext.local ones, which need "
              "bubblewrap (apt-get install bubblewrap)")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="sbx-bench-create-", dir="/var/tmp"))
    tmp.chmod(0o711)  # jail uids pass through, cannot list
    env = fresh_env(tmp / "home", SANDBOXER_LOCAL_CAPACITY="128")
    token = cli(env, "tokens", "add", "bench", "--admin").strip()
    server = Serve(env, tmp / "serve.log")
    api = Api(server.url, token)
    try:
        tw, warm = api.create()  # starts the ext.local endpoint
        if warm.get("state") != "ready":
            raise SystemExit(f"the first create through the API failed: {warm}")
        s = sequential(api, warm, args.rounds)
        b = burst(server.url, token, args.burst, args.clients)
        s["burst"] = b["times"]
        s["burst_destroy"] = destroy_all(server.url, token, b["ids"], args.clients)
        api.destroy(warm["id"])
    finally:
        leftovers(api)
        api.close()
        server.stop()
        stop_services([tmp / "home"])
        shutil.rmtree(tmp, ignore_errors=True)
    return finish(args, s, b, tw)


def finish(args: argparse.Namespace, s: dict[str, list[float]], b: dict[str, Any],
           first: float) -> int:
    m = {k: median(v) * 1000 for k, v in s.items() if v}
    names = {"create": "ext.local create (API)",
             "burst": f"ext.local burst create (API, {args.clients} clients)",
             "destroy": "ext.local destroy (API)",
             "baseline": "baseline: GET + bwrap + asyncssh",
             "get": "baseline: GET /v1/sandboxes/ID",
             "ssh": "baseline: asyncssh round trip"}
    base = (f"GET {m['get']:.1f} + bwrap {m['bwrap']:.1f} + asyncssh {m['ssh']:.1f}, "
            "median of sums")
    checks = [Check(f"create-to-ready via the API (median of {args.rounds})", m["create"],
                    m["baseline"], base, limit=25, series=names["create"]),
              Check(f"destroy via the API (median of {args.rounds})", m["destroy"],
                    m["get"], "GET of one sandbox")]
    ok = report("ext.local through the HTTP API (serve, 1 worker, SQLite)", checks)
    ready, total = len(b["ids"]), args.burst
    bursts: list[Check] = []
    if b["times"]:
        p = {q: percentile(b["times"], q) * 1000 for q in (50, 90, 99)}
        bursts = [Check(f"burst p50 ({args.clients} clients)", p[50], m["create"],
                        "one create at a time"),
                  Check("burst p90", p[90], p[50], "burst p50"),
                  Check("burst p99", p[99], p[50], "burst p50", max_ratio=2)]
    ok &= report(f"a burst of {total} creates from {args.clients} clients", bursts)
    print(f"  {'PASS' if ready == total else 'FAIL'}  ready: {ready}/{total} in "
          f"{b['wall']:.2f} s ({ready / b['wall']:.0f} creates/s)")
    for doc in b["failed"][:3]:
        print(f"        not ready: {doc}")
    ok &= ready == total
    print(f"  first create (starts the ext.local endpoint): {first * 1000:.1f} ms")
    if args.json:
        figures = {"title": "bench/create_api.py: ext.local through the HTTP API",
                   "first_create_ms": round(first * 1000, 1),
                   "medians_ms": {k: round(v, 2) for k, v in m.items()},
                   "burst": {"creates": total, "clients": args.clients, "ready": ready,
                             "wall_s": round(b["wall"], 3)}}
        write_json(args.json, figures, {n: ms(s[k]) for k, n in names.items()},
                   [*checks, *bursts])
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    raise SystemExit(main())
