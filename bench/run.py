"""sand-boxer benchmarks: every figure is a ratio against a baseline run in this process.

    python3 bench/run.py [--quick] [--json FILE]

1. ext.local through the CLI (the ``sandboxer`` console script beside this interpreter):
   create-to-ready (median; target <= 100 ms and <= 1.5x the baseline: bare
   ``bwrap ... true`` + one OpenSSH round trip to an existing sandbox + ``python -c pass``,
   each measured in the same rounds) and destroy (target <= 60 ms, against
   ``python -c pass``); ``python -c pass`` is printed beside them, so a reader sees how
   much of each figure is the interpreter's start alone.
2. The first create on a fresh SANDBOXER_HOME, which starts the local service (median over
   several fresh homes; target <= 300 ms, against the same baseline), and the same against
   its floor: ``python -c pass`` (the CLI) + a ``python -c`` importing asyncio, asyncssh,
   pydantic and yaml (what the service loads before it can do anything), printed.
3. CLI cold start of `get ID --json` and `list --json` with 10,000 sandboxes in the store,
   against `python -c pass`.
4. Cost of scale: resident memory of everything sand-boxer keeps running with 50 idle
   ext.local sandboxes (the endpoint and each sandbox's jail: bwrap, its init, the
   holder), per sandbox (target PSS <= 5 MiB); and the last five of 50 creates in a row
   against creates 2-6, each in units of a ``python -c pass`` run just before it (the
   first create starts the service; target <= x1.2). RSS counts
   the pages 150 bwrap processes share (libc) 150 times; PSS divides them among their
   users, so ``pss_mib_per_sandbox`` is what one more sandbox costs the machine.

``--json FILE`` also writes the figures, each check and the raw samples (ms) that
bench/plot.py draws. Exit status 1 when a target is missed (not with
``--quick``: a smoke of a few rounds says that everything runs, not how fast).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from figures import (
    BWRAP,
    CLI,
    PY,
    Check,
    median,
    ms,
    report,
    service_pids,
    stop_services,
    write_json,
)


def timed(
    argv: list[str], env: dict[str, str]
) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    t = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False,
                          stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t
    if done.returncode != 0:
        raise SystemExit(f"benchmark command failed: {shlex.join(argv)}\n"
                         f"{done.stderr.decode(errors='replace')}")
    return elapsed, done


def median_ms(samples: list[float]) -> float:
    return median(samples) * 1000


def fresh_env(tmp: Path, name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
    env["SANDBOXER_HOME"] = str(tmp / name)
    env["SANDBOXER_LOCAL_IDLE_EXIT"] = "30"  # keep the service up between samples
    return env


def create(env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    t, done = timed([CLI, "create", "profile.local", "--ttl", "30m", "--json", "--quiet"], env)
    return t, json.loads(done.stdout)


def destroy(env: dict[str, str], *ids: str) -> float:
    t, _ = timed([CLI, "destroy", *ids, "--json"], env)
    return t


def ssh_true(reach: dict[str, Any]) -> list[str]:
    return [*shlex.split(reach["ssh_command"]), "-o", "BatchMode=yes", "--", "true"]


SERVICE_IMPORTS = "import asyncio, asyncssh, pydantic, yaml"
SERIES = {"create": "ext.local create (CLI)",
          "first": "ext.local first create, starts the service (CLI)",
          "destroy": "ext.local destroy (CLI)",
          "baseline": "baseline: bwrap + ssh + python -c pass",
          "python": "baseline: python -c pass",
          "bwrap": "baseline: bwrap true",
          "ssh": "baseline: OpenSSH round trip"}


class Lifecycle:
    """Sections 1 and 2: the samples (s) of each series, then the checks."""

    def __init__(self) -> None:
        self.s: dict[str, list[float]] = {k: [] for k in (
            "bwrap", "ssh", "python", "baseline", "create", "destroy", "first", "floor")}

    def run(self, tmp: Path, rounds: int, homes: int) -> None:
        env = fresh_env(tmp, "lifecycle")
        _, warm = create(env)  # starts the service; the first creates are measured below
        s = self.s
        for _ in range(rounds):
            tb, _ = timed(BWRAP, env)
            ts, _ = timed(ssh_true(warm["reachability"]), env)
            tp, _ = timed([PY, "-c", "pass"], env)
            s["bwrap"].append(tb)
            s["ssh"].append(ts)
            s["python"].append(tp)
            s["baseline"].append(tb + ts + tp)
            tc, doc = create(env)
            s["create"].append(tc)
            s["destroy"].append(destroy(env, doc["id"]))
        destroy(env, warm["id"])
        # Fresh homes: each create starts that home's service.
        fresh = [fresh_env(tmp, f"first-{i}") for i in range(homes)]
        for env_i in fresh:
            # The first create's floor: the CLI's interpreter, and the service's importing
            # what it cannot do without (asyncssh for the endpoints, pydantic and yaml for
            # the profiles) before it does anything.
            tp, _ = timed([PY, "-c", "pass"], env_i)
            ti, _ = timed([PY, "-c", SERVICE_IMPORTS], env_i)
            s["floor"].append(tp + ti)
            tf, doc = create(env_i)
            s["first"].append(tf)
            destroy(env_i, doc["id"])
        stop_services([Path(env["SANDBOXER_HOME"]),
                       *(Path(e["SANDBOXER_HOME"]) for e in fresh)])

    def checks(self) -> list[Check]:
        m = {k: median_ms(v) for k, v in self.s.items()}
        base = (f"bwrap {m['bwrap']:.1f} + ssh {m['ssh']:.1f} + python -c pass "
                f"{m['python']:.1f}, median of sums")
        n, h = len(self.s["create"]), len(self.s["first"])
        return [
            Check(f"create-to-ready via the CLI (median of {n})", m["create"],
                  m["baseline"], base, limit=100, max_ratio=1.5, series=SERIES["create"]),
            Check(f"first create, starts the service ({h} homes)", m["first"],
                  m["baseline"], base, limit=300, series=SERIES["first"]),
            Check("the same, against its floor", m["first"], m["floor"],
                  f"python -c pass + python -c '{SERVICE_IMPORTS}', median of sums"),
            Check(f"destroy via the CLI (median of {n})", m["destroy"], m["python"],
                  "python -c pass", limit=60, series=SERIES["destroy"]),
            Check("python -c pass (the interpreter alone)", m["python"], m["baseline"],
                  "the create baseline"),
        ]

    def samples(self) -> dict[str, list[float]]:
        return {name: ms(self.s[key]) for key, name in SERIES.items()}

    def figures(self) -> dict[str, Any]:
        m = {k: round(median_ms(v), 1) for k, v in self.s.items()}
        return {
            "baseline_bwrap_plus_ssh_plus_python_ms": m["baseline"],
            "bwrap_ms": m["bwrap"], "ssh_round_trip_ms": m["ssh"],
            "python_pass_ms": m["python"],
            "create_to_ready_ms": m["create"],
            "first_create_with_service_start_ms": m["first"],
            "first_create_floor_ms": m["floor"],
            "destroy_ms": m["destroy"],
            "create_ratio": round(m["create"] / m["baseline"], 2),
            "targets": {"create_to_ready_ms": 100, "create_ratio": 1.5,
                        "first_create_ms": 300, "destroy_ms": 60},
        }


def populate(db: Path, n: int) -> str:
    """n ready sandboxes straight into a migrated store (no extension behind them)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from sandboxer.store.sqlite import SqliteStore

    SqliteStore(db).close()
    now = time.time()
    reach = {"schema": "sandboxer.reachability/v1", "transport": "ssh", "host": "127.0.0.1",
             "port": 40000, "user": "sandbox", "identity_file": "/nonexistent",
             "known_hosts": "[127.0.0.1]:40000 ssh-ed25519 AAAA", "ssh_command": "ssh",
             "tunnel": None, "tunnel_via": None, "identity": None, "tunnel_status": None}
    rows = []
    for i in range(n):
        sid = "sbx-" + uuid.uuid4().hex[:10].translate(str.maketrans("0189", "2345"))
        rows.append((sid, "profile.bench", "ext.bench", "nowhere", "ready", "bench",
                     json.dumps({"i": str(i)}), now, now + 86400, now + 86400, now,
                     json.dumps({**reach, "sandbox_id": sid})))
    conn = sqlite3.connect(db)
    with conn:
        conn.executemany(
            "INSERT INTO sandboxes (id, profile, extension, target, state, actor, labels, "
            "created_at, expires_at, max_expires_at, updated_at, reachability) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    conn.close()
    return rows[n // 2][0]


def bench_cold_start(tmp: Path, rounds: int, n: int) -> tuple[dict[str, Any], list[Check],
                                                              dict[str, list[float]]]:
    env = fresh_env(tmp, "coldstart")
    Path(env["SANDBOXER_HOME"]).mkdir(mode=0o700)
    sid = populate(Path(env["SANDBOXER_HOME"]) / "state.db", n)
    base, get, lst = [], [], []
    for _ in range(rounds):
        base.append(timed([PY, "-c", "pass"], env)[0])
        get.append(timed([CLI, "get", sid, "--json"], env)[0])
        t, done = timed([CLI, "list", "--json"], env)
        lst.append(t)
    assert len(json.loads(done.stdout)["items"]) == n
    b = median_ms(base)
    names = f"get (CLI, {n:,} in the store)", f"list (CLI, {n:,} in the store)"
    checks = [Check(f"get ID --json, {n:,} in the store", median_ms(get), b,
                    "python -c pass", limit=150, series=names[0]),
              Check(f"list --json, {n:,} in the store", median_ms(lst), b,
                    "python -c pass", limit=400, series=names[1])]
    figures = {"sandboxes_in_store": n, "baseline_python_pass_ms": round(b, 1),
               "get_ms": round(median_ms(get), 1), "list_ms": round(median_ms(lst), 1),
               "targets": {"get_ms": 150, "list_ms": 400}}
    samples = {names[0]: ms(get), names[1]: ms(lst)}
    return figures, checks, samples


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (libc of 150 bwraps) counted once in total."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):  # it exited meanwhile
            for tid in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (tid / "children").read_text().split()]
    return out


def bench_scale(tmp: Path, count: int) -> tuple[dict[str, Any], list[Check],
                                               dict[str, list[float]]]:
    env = fresh_env(tmp, "scale")
    times, bases, ids = [], [], []
    try:
        for _ in range(count):
            bases.append(timed([PY, "-c", "pass"], env)[0])  # the machine's load, then
            t, doc = create(env)
            times.append(t)
            ids.append(doc["id"])
        # Everything sand-boxer keeps running: the service, its endpoint and every
        # descendant (each sandbox's jail: bwrap, bwrap's init, the waiting holder).
        top = service_pids(Path(env["SANDBOXER_HOME"]))
        pids = sorted({d for p in top for d in descendants(p)})
        total_kib = sum(rss_kib(p) for p in pids)
        endpoint_kib = sum(rss_kib(p) for p in top)
        pss_total = sum(pss_kib(p) for p in pids)
        base_t, _ = timed([PY, "-c", "pass"], env)
    finally:
        for i in range(0, len(ids), 25):
            destroy(env, *ids[i:i + 25])
    # The first create starts the service: creates 2-6 against the last five, each in
    # units of the `python -c pass` just before it (the machine's load drifts meanwhile).
    per = [t / b for t, b in zip(times, bases, strict=True)]
    early, late = median(per[1:6]), median(per[-5:])
    checks = [Check(f"PSS per idle sandbox, {count} idle", pss_total / 1024 / count,
                    endpoint_kib / 1024, "the service's RSS", limit=5, unit="MiB"),
              Check(f"last 5 of {count} creates, in python -c pass", late, early,
                    "creates 2-6", max_ratio=1.2, unit="x")]
    return {
        "idle_sandboxes": count,
        "resident_processes": len(pids),
        "resident_mib_total": round(total_kib / 1024, 1),
        "resident_mib_per_sandbox": round(total_kib / 1024 / count, 2),
        "endpoint_rss_mib": round(endpoint_kib / 1024, 1),
        "pss_mib_total": round(pss_total / 1024, 1),
        "pss_mib_per_sandbox": round(pss_total / 1024 / count, 2),
        "first_create_ms": round(times[0] * 1000, 1),
        "second_create_ms": round(times[1] * 1000, 1),
        "last_create_ms": round(times[-1] * 1000, 1),
        "last_vs_first_ratio": round(times[-1] / times[0], 2),
        "last_vs_second_ratio": round(times[-1] / times[1], 2),
        "last_five_vs_creates_2_to_6": round(late / early, 2),  # per python -c pass
        "baseline_python_pass_ms": round(base_t * 1000, 1),
        "targets": {"pss_mib_per_sandbox": 5, "last_five_vs_creates_2_to_6": 1.2},
    }, checks, {f"ext.local {count} creates in a row, all kept (CLI)": ms(times)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="3 rounds, 2 homes, 1,000 in the store, 5 idle sandboxes (CI smoke)")
    ap.add_argument("--json", type=Path, help="also write the figures and samples here")
    args = ap.parse_args()
    rounds, homes = (3, 2) if args.quick else (15, 5)
    lifecycle = Lifecycle()
    with tempfile.TemporaryDirectory(prefix="sbx-bench-", dir="/var/tmp") as d:
        tmp = Path(d)
        os.chmod(tmp, 0o711)  # noqa: S103 - jail uids pass through, cannot list
        try:
            lifecycle.run(tmp, rounds, homes)
            cold, cold_checks, cold_samples = bench_cold_start(
                tmp, rounds, 1_000 if args.quick else 10_000)
            scale, scale_checks, scale_samples = bench_scale(tmp, 5 if args.quick else 50)
        finally:  # also after a failure: no service (and no jail of its) outlives its home
            stop_services([p for p in tmp.iterdir() if p.is_dir()])
    checks = lifecycle.checks()
    ok = report("ext.local through the CLI (lifecycle)", checks)
    ok &= report("CLI cold start", cold_checks)
    ok &= report("scale", scale_checks)
    for key, value in scale.items():
        print(f"        {key:38s} {value}")
    if args.json:
        results = {"title": "bench/run.py: ext.local through the CLI",
                   "lifecycle": lifecycle.figures(), "cold_start": cold, "scale": scale}
        write_json(args.json, results,
                   {**lifecycle.samples(), **scale_samples, **cold_samples},
                   [*checks, *cold_checks, *scale_checks])
    return 0 if ok or args.quick else 1


if __name__ == "__main__":
    raise SystemExit(main())
