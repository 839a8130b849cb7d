"""HTTP API benchmark against a warm `sandboxer serve`; ratios against a bare FastAPI echo
route served by the same uvicorn, measured in the same run.

    python3 bench/api.py [--quick] [--json FILE]

1. ext.local create-to-ready through `POST /v1/sandboxes` (target <= 150 ms), warm server.
2. `GET /v1/sandboxes/{id}` p50/p99 under 50 concurrent clients, against `GET /echo/{id}`.
3. Events delivered per second to a local State Hub stand-in (uvicorn), against the
   stand-in's own throughput for the same number of requests from 16 concurrent clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request

PY = sys.executable
CLI = shutil.which("sandboxer", path=os.path.dirname(PY)) or "sandboxer"
ECHO_APP = """
import sys, uvicorn
from fastapi import FastAPI
app = FastAPI()
@app.get("/echo/{x}")
async def echo(x: str) -> dict:
    return {"x": x}
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
            access_log=False)
"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


class Hub:
    """A State Hub stand-in: FastAPI under uvicorn in a thread, counting keys."""

    def __init__(self) -> None:
        import uvicorn

        self.keys: set[str] = set()
        app = FastAPI()

        @app.post("/v1/events", status_code=202)
        async def accept(request: Request) -> dict[str, bool]:
            await request.body()
            self.keys.add(request.headers.get("idempotency-key", ""))
            return {"ok": True}

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", access_log=False))
        threading.Thread(target=self.server.run, daemon=True).start()
        wait_http(f"http://127.0.0.1:{self.port}/docs")


async def load(url: str, headers: dict[str, str], clients: int, per_client: int,
               method: str = "GET") -> list[float]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as http:
        async def one() -> list[float]:
            out = []
            for _ in range(per_client):
                t = time.perf_counter()
                r = await http.request(method, url, content=b"{}" if method == "POST" else None)
                out.append(time.perf_counter() - t)
                assert r.status_code < 300, r.text
            return out

        results = await asyncio.gather(*(one() for _ in range(clients)))
    return [x for r in results for x in r]


def pct(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def insert_events(db: Path, count: int, sandboxes: int) -> None:
    conn = sqlite3.connect(db, timeout=30)
    now = time.time()
    payload = json.dumps({"schema": "sandboxer.sandbox/v1", "state": "ready"})
    rows = [(f"evt-{uuid.uuid4().hex}", f"sbx-bench{i % sandboxes:06d}", "sandbox.ready",
             now, payload) for i in range(count)]
    with conn:
        conn.executemany("INSERT INTO events (id, sandbox_id, type, time, payload) "
                         "VALUES (?, ?, ?, ?, ?)", rows)
    conn.close()


def undelivered(db: Path) -> int:
    conn = sqlite3.connect(db, timeout=30)
    try:
        return int(conn.execute(
            "SELECT COUNT(*) FROM events WHERE delivered_at IS NULL").fetchone()[0])
    finally:
        conn.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    creates, per_client, n_events = (5, 20, 500) if args.quick else (15, 60, 3000)
    results: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="sbx-bench-api-"))
    hub = Hub()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
    env.update(SANDBOXER_HOME=str(tmp / "home"), SANDBOXER_LOCAL_IDLE_EXIT="60",
               SANDBOXER_STATE_HUB_URL=f"http://127.0.0.1:{hub.port}")
    token = subprocess.run([CLI, "tokens", "add", "bench", "--admin"], env=env, check=True,
                           capture_output=True, text=True).stdout.strip()
    auth = {"Authorization": f"Bearer {token}"}
    log = (tmp / "serve.log").open("wb")
    serve = subprocess.Popen([CLI, "serve", "--port", "0"], env=env, stdout=log, stderr=log,
                             stdin=subprocess.DEVNULL)
    echo_port = free_port()
    echo = subprocess.Popen([PY, "-c", ECHO_APP, str(echo_port)], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (m := re.search(r"serving (http://[\d.:]+)",
                                  (tmp / "serve.log").read_text())):
            if time.monotonic() > deadline or serve.poll() is not None:
                raise SystemExit((tmp / "serve.log").read_text())
            time.sleep(0.05)
        url = m.group(1)
        echo_url = f"http://127.0.0.1:{echo_port}"
        wait_http(f"{echo_url}/echo/x")

        # 1. create-to-ready, warm: one untimed create starts the ext.local endpoint.
        with httpx.Client(base_url=url, headers=auth, timeout=120) as http:
            body = {"profile": "profile.local", "ttl": "10m"}
            warm = http.post("/v1/sandboxes", json=body)
            assert warm.status_code == 201, warm.text
            times, ids = [], [warm.json()["id"]]
            for _ in range(creates):
                t = time.perf_counter()
                r = http.post("/v1/sandboxes", json=body)
                times.append(time.perf_counter() - t)
                assert r.status_code == 201, r.text
                ids.append(r.json()["id"])
            echo_one = []
            with httpx.Client(base_url=echo_url) as bare:  # keep-alive, like `http`
                for _ in range(50):
                    t = time.perf_counter()
                    bare.get("/echo/x")
                    echo_one.append(time.perf_counter() - t)
            create_ms = statistics.median(times) * 1000
            results["create_to_ready_ms"] = round(create_ms, 1)
            results["create_target_ms"] = 150
            results["echo_single_ms"] = round(statistics.median(echo_one) * 1000, 2)

            # 2. GET under 50 concurrent clients.
            sid = ids[0]
            got = asyncio.run(load(f"{url}/v1/sandboxes/{sid}", auth, 50, per_client))
            base = asyncio.run(load(f"{echo_url}/echo/{sid}", {}, 50, per_client))
            for name, samples in (("get", got), ("echo", base)):
                results[f"{name}_p50_ms"] = round(pct(samples, 50), 2)
                results[f"{name}_p99_ms"] = round(pct(samples, 99), 2)
            for sid_ in ids:
                http.delete(f"/v1/sandboxes/{sid_}")

        # 3. Events/s to the State Hub stand-in (200 sandboxes, in order per sandbox).
        db = tmp / "home" / "state.db"
        deadline = time.monotonic() + 60
        while undelivered(db) and time.monotonic() < deadline:
            time.sleep(0.05)  # the lifecycle events above first
        insert_events(db, n_events, sandboxes=200)
        t = time.perf_counter()
        while undelivered(db):
            if time.perf_counter() - t > 300:
                raise SystemExit("events were not delivered within 300 s:\n"
                                 + (tmp / "serve.log").read_text()[-3000:])
            time.sleep(0.01)
        elapsed = time.perf_counter() - t
        results["events_per_s"] = round(n_events / elapsed)
        t = time.perf_counter()
        asyncio.run(load(f"http://127.0.0.1:{hub.port}/v1/events", {}, 16,
                         max(1, n_events // 16), method="POST"))
        results["hub_bare_per_s"] = round((n_events // 16 * 16) / (time.perf_counter() - t))
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)
        echo.terminate()
        echo.wait(10)
        hub.server.should_exit = True
        shutil.rmtree(tmp, ignore_errors=True)

    r = results
    print(f"create-to-ready via API (ext.local, warm): {r['create_to_ready_ms']:.0f} ms "
          f"(target <= 150 ms: {'ok' if r['create_to_ready_ms'] <= 150 else 'MISSED'}); "
          f"x{r['create_to_ready_ms'] / r['echo_single_ms']:.0f} a bare echo request "
          f"({r['echo_single_ms']:.2f} ms)")
    print(f"GET /v1/sandboxes/ID, 50 clients: p50 {r['get_p50_ms']:.1f} ms, p99 "
          f"{r['get_p99_ms']:.1f} ms; echo p50 {r['echo_p50_ms']:.1f} ms, p99 "
          f"{r['echo_p99_ms']:.1f} ms; ratio p50 x{r['get_p50_ms'] / r['echo_p50_ms']:.2f}, "
          f"p99 x{r['get_p99_ms'] / r['echo_p99_ms']:.2f}")
    print(f"events to State Hub: {r['events_per_s']}/s; the stand-in alone takes "
          f"{r['hub_bare_per_s']}/s from 16 clients; ratio "
          f"{r['events_per_s'] / r['hub_bare_per_s']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
