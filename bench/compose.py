"""ext.compose-ssh against the raw tools, in one run (issue 3's benchmark).

    python3 bench/compose.py [--rounds N]

Baseline: the same compose file brought up by hand on the same engine
(`docker compose up -d`, then the first successful `ssh … true`), and `docker compose
down`. Measured: `sandboxer create --target local` to ready, and `sandboxer destroy`,
through the CLI. Also 5 concurrent creates on one target. Uses DOCKER_HOST when an engine
answers there, else starts a private dockerd (as the integration tests do).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CLI = shutil.which("sandboxer", path=os.path.dirname(sys.executable)) or "sandboxer"


def engine(tmp: Path) -> tuple[str, Any]:
    host = os.environ.get("DOCKER_HOST")
    if host and subprocess.run(["docker", "-H", host, "version"], capture_output=True,
                               check=False).returncode == 0:
        return host, None
    sys.path.insert(0, str(ROOT / "tests" / "integration" / "compose"))
    import conftest as infra  # the same coexisting dockerd the integration tests start

    daemon, proc = infra.start_dockerd()
    return daemon.host, (infra, daemon, proc)


def keys(d: Path) -> tuple[Path, Path]:
    """A client key and a host key, laid out as the image's entrypoint expects."""
    etc = d / "etc"
    etc.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "id")],
                   check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f",
                    str(etc / "ssh_host_ed25519_key")], check=True)
    shutil.copy(d / "id.pub", etc / "authorized_keys")
    return d / "id", etc


def by_hand(env: dict[str, str], d: Path, image: str, rounds: int) -> tuple[list[float],
                                                                              list[float]]:
    ident, etc = keys(d)
    (d / "compose.yaml").write_text(
        f"services:\n  main:\n    image: {image}\n    environment: {{SANDBOXER_USER: agent}}\n"
        f"    ports: ['127.0.0.1::22']\n    volumes: ['{etc}:/etc/sandboxer:ro']\n")
    ups, downs = [], []
    for i in range(rounds):
        project = f"byhand{i}"
        base = ["docker", "compose", "-p", project, "-f", str(d / "compose.yaml")]
        t = time.perf_counter()
        subprocess.run([*base, "up", "-d"], env=env, check=True, capture_output=True)
        port = subprocess.run([*base, "port", "main", "22"], env=env, check=True,
                              capture_output=True, text=True).stdout.strip().rsplit(":", 1)[1]
        pub = (etc / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        (d / "known").write_text(f"[127.0.0.1]:{port} {' '.join(pub)}\n")
        ssh = ["ssh", "-i", str(ident), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
               "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={d / 'known'}",
               "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "-p", port,
               "agent@127.0.0.1", "true"]
        while subprocess.run(ssh, capture_output=True, check=False).returncode != 0:
            time.sleep(0.02)
        ups.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run([*base, "down", "-v", "--remove-orphans", "-t", "5"], env=env,
                       check=True, capture_output=True)
        downs.append(time.perf_counter() - t)
    return ups, downs


def through_sandboxer(env: dict[str, str], rounds: int) -> tuple[list[float], list[float]]:
    creates, destroys = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        done = subprocess.run([CLI, "create", "profile.bench-compose", "--target", "local",
                               "--json", "--quiet"], env=env, capture_output=True, text=True,
                              check=False)
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        creates.append(time.perf_counter() - t)
        sid = json.loads(done.stdout)["id"]
        t = time.perf_counter()
        subprocess.run([CLI, "destroy", sid], env=env, check=True, capture_output=True)
        destroys.append(time.perf_counter() - t)
    return creates, destroys


def in_process(env: dict[str, str], rounds: int) -> tuple[list[float], list[float],
                                                         dict[str, float]]:
    """The same through LocalClient in this process: no interpreter start, no imports."""
    sys.path.insert(0, str(ROOT / "src"))
    from sandboxer.client.local import LocalClient
    from sandboxer.config import Settings

    phases: dict[str, list[float]] = {}
    creates, destroys = [], []
    for _ in range(rounds):
        marks: list[tuple[str, float]] = []
        def mark(message: str, marks: list[tuple[str, float]] = marks) -> None:
            marks.append((message, time.perf_counter()))

        client = LocalClient(Settings.from_env(env), progress=mark)
        t = time.perf_counter()
        sid = client.create("profile.bench-compose", target="local").id
        end = time.perf_counter()
        creates.append(end - t)
        last = t
        for message, at in [*marks, ("ready", end)]:
            phases.setdefault(message.split(": ", 1)[-1].split(" on ")[0], []).append(at - last)
            last = at
        t = time.perf_counter()
        client.destroy(sid)
        destroys.append(time.perf_counter() - t)
    return creates, destroys, {k: round(statistics.median(v), 3) for k, v in phases.items()}


def concurrent(env: dict[str, str], n: int) -> dict[str, Any]:
    def one(_: int) -> tuple[int, str]:
        done = subprocess.run([CLI, "create", "profile.bench-compose", "--target", "local",
                               "--json", "--quiet"], env=env, capture_output=True, text=True,
                              check=False)
        return done.returncode, done.stdout if done.returncode == 0 else done.stderr

    t = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(one, range(n)))
    elapsed = time.perf_counter() - t
    ids = [json.loads(out)["id"] for rc, out in results if rc == 0]
    if ids:
        subprocess.run([CLI, "destroy", *ids], env=env, check=True, capture_output=True)
    return {"concurrent_creates": n, "succeeded": len(ids), "wall_s": round(elapsed, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="sbx-bench-compose-", dir="/var/tmp") as tmp:
        d = Path(tmp)
        host, started = engine(d)
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOXER_")}
            env.update(DOCKER_HOST=host, SANDBOXER_HOME=str(d / "home"),
                       SANDBOXER_PROFILES=str(d / "profiles"))
            built = subprocess.run(["bash", str(ROOT / "images/sandbox-base/build.sh"),
                                    "--docker-host", host], capture_output=True, text=True,
                                   check=True)
            image = built.stdout.strip().splitlines()[-1]
            (d / "profiles").mkdir()
            (d / "profiles" / "bench.yaml").write_text(
                "id: profile.bench-compose\nextension: ext.compose-ssh\n"
                "spec: {service: main, pull: never, compose: {services: "
                f"{{main: {{image: '{image}'}}}}}}}}\nreachability: {{user: agent}}\n")
            (d / "hand").mkdir()
            hand_up, hand_down = by_hand(env, d / "hand", image, args.rounds)
            sb_up, sb_down = through_sandboxer(env, args.rounds)
            ip_up, ip_down, phases = in_process(env, args.rounds)
            up_b, up_s = statistics.median(hand_up), statistics.median(sb_up)
            down_b, down_s = statistics.median(hand_down), statistics.median(sb_down)
            figures = {
                "by_hand_up_to_first_ssh_s": round(up_b, 2),
                "sandboxer_create_to_ready_s": round(up_s, 2),
                "create_overhead_pct": round((up_s / up_b - 1) * 100, 1),
                "by_hand_down_s": round(down_b, 2),
                "sandboxer_destroy_s": round(down_s, 2),
                "destroy_overhead_pct": round((down_s / down_b - 1) * 100, 1),
                "in_process_create_s": round(statistics.median(ip_up), 2),
                "in_process_create_overhead_pct": round(
                    (statistics.median(ip_up) / up_b - 1) * 100, 1),
                "in_process_destroy_s": round(statistics.median(ip_down), 2),
                "in_process_destroy_overhead_pct": round(
                    (statistics.median(ip_down) / down_b - 1) * 100, 1),
                "phases_before_each_progress_line_s": phases,
                **concurrent(env, 5),
                "target": "overhead <= 15%; 5 concurrent creates all succeed",
            }
        finally:
            if started is not None:
                infra, daemon, proc = started
                infra._stop_dockerd(daemon, proc)
    print("\n== compose-ssh (local target)")
    for key, value in figures.items():
        print(f"  {key:32s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
