"""sand-boxer benchmarks: every figure is a ratio against a baseline run in this process.

    python3 bench/run.py [--quick] [--json FILE]

1. ext.local create-to-ready and destroy through the CLI, against bare `bwrap ... true`
   plus one OpenSSH round trip to an existing sandbox.
2. CLI cold start of `get ID --json` and `list --json` with 10,000 sandboxes in the store,
   against `python -c pass`.
3. Cost of scale: resident memory of everything sand-boxer keeps running with 50 idle
   ext.local sandboxes (the endpoint and each sandbox's jail: bwrap, its init, the
   holder), per sandbox; and the 1st against the 50th of 50 creates in a row. RSS counts
   the pages 150 bwrap processes share (libc) 150 times; PSS divides them among their
   users, so ``pss_mib_per_sandbox`` is what one more sandbox costs the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

PY = sys.executable
CLI = shutil.which("sandboxer", path=os.path.dirname(PY)) or "sandboxer"


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
    return statistics.median(samples) * 1000


def fresh_env(tmp: Path, name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
    env["SANDBOXER_HOME"] = str(tmp / name)
    env["SANDBOXER_LOCAL_IDLE_EXIT"] = "30"  # keep the endpoint up between samples
    return env


def create(env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    t, done = timed([CLI, "create", "profile.local", "--ttl", "30m", "--json", "--quiet"], env)
    return t, json.loads(done.stdout)


def destroy(env: dict[str, str], *ids: str) -> float:
    t, _ = timed([CLI, "destroy", *ids, "--json"], env)
    return t


def ssh_true(reach: dict[str, Any]) -> list[str]:
    return [*shlex.split(reach["ssh_command"]), "-o", "BatchMode=yes", "--", "true"]


def bench_lifecycle(tmp: Path, rounds: int) -> dict[str, Any]:
    env = fresh_env(tmp, "lifecycle")
    first, warm = create(env)  # includes starting the shared endpoint
    bwrap = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent",
             "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin",
             "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
             "--proc", "/proc", "--dev", "/dev", "true"]
    baseline, creates, destroys = [], [], []
    for _ in range(rounds):
        tb, _ = timed(bwrap, env)
        ts, _ = timed(ssh_true(warm["reachability"]), env)
        baseline.append(tb + ts)
        tc, doc = create(env)
        creates.append(tc)
        destroys.append(destroy(env, doc["id"]))
    destroy(env, warm["id"])
    base = median_ms(baseline)
    return {
        "baseline_bwrap_plus_ssh_ms": round(base, 1),
        "first_create_with_endpoint_start_ms": round(first * 1000, 1),
        "create_to_ready_ms": round(median_ms(creates), 1),
        "destroy_ms": round(median_ms(destroys), 1),
        "create_ratio": round(median_ms(creates) / base, 2),
        "destroy_ratio": round(median_ms(destroys) / base, 2),
        "targets": {"create_to_ready_ms": 500, "destroy_ms": 200},
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


def bench_cold_start(tmp: Path, rounds: int, n: int) -> dict[str, Any]:
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
    return {
        "sandboxes_in_store": n,
        "baseline_python_pass_ms": round(b, 1),
        "get_ms": round(median_ms(get), 1),
        "list_ms": round(median_ms(lst), 1),
        "get_ratio": round(median_ms(get) / b, 2),
        "list_ratio": round(median_ms(lst) / b, 2),
        "targets": {"get_ms": 150, "list_ms": 400},
    }


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
        for tid in Path(f"/proc/{p}/task").iterdir():
            todo += [int(c) for c in (tid / "children").read_text().split()]
    return out


def bench_scale(tmp: Path, count: int) -> dict[str, Any]:
    env = fresh_env(tmp, "scale")
    times, ids = [], []
    try:
        for _ in range(count):
            t, doc = create(env)
            times.append(t)
            ids.append(doc["id"])
        home = Path(env["SANDBOXER_HOME"])
        pid = int((home / "run" / "local-endpoint.pid").read_text().split()[0])
        # Everything sand-boxer keeps running: the endpoint and every descendant of it
        # (each sandbox's jail: bwrap, bwrap's init, the waiting holder).
        pids = descendants(pid)
        total_kib = sum(rss_kib(p) for p in pids)
        endpoint_kib = rss_kib(pid)
        pss_total = sum(pss_kib(p) for p in pids)
        base_t, _ = timed([PY, "-c", "pass"], env)
    finally:
        for i in range(0, len(ids), 25):
            destroy(env, *ids[i:i + 25])
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
        "baseline_python_pass_ms": round(base_t * 1000, 1),
        "targets": {"pss_mib_per_sandbox": 5, "last_vs_first_ratio": 1.2},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds (CI smoke)")
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    args = ap.parse_args()
    rounds = 3 if args.quick else 15
    with tempfile.TemporaryDirectory(prefix="sbx-bench-", dir="/var/tmp") as d:
        tmp = Path(d)
        os.chmod(tmp, 0o711)  # noqa: S103 - jail uids pass through, cannot list
        results = {
            "lifecycle": bench_lifecycle(tmp, rounds),
            "cold_start": bench_cold_start(tmp, rounds, 10_000),
            "scale": bench_scale(tmp, 10 if args.quick else 50),
        }
    for section, figures in results.items():
        print(f"\n== {section}")
        for key, value in figures.items():
            print(f"  {key:40s} {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
