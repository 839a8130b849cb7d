"""ext.vm-packer benchmark: create-to-ready from a cached image against a bare QEMU boot.

    python3 bench/vm.py [--runs N] [--images DIR] [--json FILE]

Both sides boot the same cached image with the same shape (1 vCPU, 384 MiB, same
accelerator) and stop the clock when an SSH command succeeds:

* sand-boxer: `sandboxer create PROFILE --json` through the CLI (keys, overlay, config
  drive, QEMU, SSH wait, lease keeper, store) until it returns ready;
* bare: `qemu-img create` of an overlay plus `qemu-system-x86_64` with a hand-made config
  drive, then the system OpenSSH client retried until it gets in.

Prints each run, the median ratio (target <= 1.1) and whether KVM works here (TCG vs KVM).
Builds the image first when `--images` holds none (root; ~2 min, not timed).

Then pause/resume (`--pause-cycles N`, default 10) on one more VM: the manager's pause and
resume (QMP stop/cont through ext.vm-packer, the store's transitions and events) against a
raw QMP ``stop``/``cont`` on a fresh connection to the same VM's socket, alternated; the
median of each and their ratio. `--runs 0` measures only that. Not part of `make bench`
(TCG boots take minutes here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from sandboxer.config import Settings  # noqa: E402
from sandboxer.extensions import _keys  # noqa: E402
from sandboxer.extensions.vm_packer import qemu  # noqa: E402

CLI = shutil.which("sandboxer", path=os.path.dirname(sys.executable)) or "sandboxer"
PROFILE = """\
id: profile.bench-vm
extension: ext.vm-packer
spec:
  packer: {template: base.json}
  vm: {cpus: 1, memory: 384M, accel: ACCEL, boot_timeout: 300}
reachability: {user: agent}
"""


def ensure_image(env: dict[str, str]) -> Path:
    images = Path(env["SANDBOXER_VM_IMAGES"])
    done = subprocess.run([CLI, "images", "build", str(REPO / "packer" / "base.json"),
                           "--json", "-q"], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        sys.exit(f"building the image failed:\n{done.stderr}")
    path = Path(json.loads(done.stdout)["path"])
    assert path.parent == images
    return path


def sandboxer_run(env: dict[str, str]) -> float:
    t = time.perf_counter()
    done = subprocess.run([CLI, "create", "profile.bench-vm", "--json"], env=env,
                          capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    took = time.perf_counter() - t
    if done.returncode != 0:
        sys.exit(f"create failed:\n{done.stderr}")
    subprocess.run([CLI, "destroy", json.loads(done.stdout)["id"]], env=env,
                   capture_output=True, check=True)
    return took


async def _raw_qmp(sock: Path, command: str) -> None:
    """One QMP command on a fresh connection, as bare as a client gets."""
    reader, writer = await asyncio.open_unix_connection(str(sock))
    try:
        await reader.readline()
        for name in ("qmp_capabilities", command):
            writer.write(json.dumps({"execute": name}).encode() + b"\n")
            while "return" not in json.loads(await reader.readline()):
                pass
    finally:
        writer.close()


def pause_run(env: dict[str, str], cycles: int) -> tuple[list[float], list[float]]:
    """(manager pause+resume, raw QMP stop+cont) seconds per cycle on one VM."""
    from sandboxer.manager import Manager

    done = subprocess.run([CLI, "create", "profile.bench-vm", "--json"], env=env,
                          capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        sys.exit(f"create failed:\n{done.stderr}")
    sid = json.loads(done.stdout)["id"]
    sock = Path(env["SANDBOXER_HOME"]) / "vm" / sid / "qmp.sock"
    ours: list[float] = []
    raw: list[float] = []

    async def cycles_of_both() -> None:
        manager = Manager(Settings.from_env(env))
        for _ in range(cycles):
            t = time.perf_counter()
            await manager.pause(sid)
            await manager.resume(sid)
            ours.append(time.perf_counter() - t)
            t = time.perf_counter()
            await _raw_qmp(sock, "stop")
            await _raw_qmp(sock, "cont")
            raw.append(time.perf_counter() - t)

    try:
        asyncio.run(cycles_of_both())
    finally:
        subprocess.run([CLI, "destroy", sid], env=env, capture_output=True, check=False)
    return ours, raw


def bare_run(image: Path, accel: str, work: Path) -> float:
    d = Path(tempfile.mkdtemp(dir=work))
    s = Settings.from_env({"SANDBOXER_HOME": str(d)})
    keys = _keys.generate(s, "sbx-benchbare0")
    t = time.perf_counter()
    subprocess.run(qemu.overlay_argv(image / "disk.qcow2", d / "o.qcow2", None), check=True)
    qemu.make_config_drive(d / "cfg.img", user="agent",
                           authorized_keys=keys.client_public + "\n",
                           host_key=keys.host_key.read_bytes(), hostname="bare",
                           secrets=False)
    port = qemu.free_port()
    boot = qemu.Boot(sandbox_id="sbx-benchbare0", image=image, overlay=d / "o.qcow2",
                     config_drive=d / "cfg.img", pidfile=d / "pid", console=d / "console",
                     port=port, cpus=1, memory_mib=384, accel=accel)
    subprocess.run(qemu.qemu_argv(boot), check=True)
    _keys.write_known_hosts(keys.known_hosts,
                            [_keys.known_hosts_line("127.0.0.1", port, keys.host_public)])
    argv = ["ssh", "-i", str(keys.identity), "-o", "IdentitiesOnly=yes",
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={keys.known_hosts}",
            "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", "-p", str(port),
            "agent@127.0.0.1", "true"]
    try:
        while subprocess.run(argv, capture_output=True, check=False,
                             stdin=subprocess.DEVNULL).returncode != 0:
            if time.perf_counter() - t > 300:
                sys.exit("the bare VM never answered SSH")
            time.sleep(0.02)
        return time.perf_counter() - t
    finally:
        os.kill(int((d / "pid").read_text()), 15)
        time.sleep(0.5)
        shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--images", default="/var/cache/sandboxer/vm-images")
    ap.add_argument("--pause-cycles", type=int, default=10)
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="sbx-bench-vm-"))
    profiles = work / "profiles"
    profiles.mkdir()
    env = {**os.environ, "SANDBOXER_HOME": str(work / "home"), "SANDBOXER_PROFILES":
           str(profiles), "SANDBOXER_VM_IMAGES": args.images}
    image = ensure_image(env)
    settings = Settings.from_env(env)
    settings.ensure()
    accel, why = qemu.choose_accel(settings, "auto", kernel=image / "vmlinuz")
    print(f"accelerator: {accel} ({why})")
    (profiles / "bench-vm.yaml").write_text(PROFILE.replace("ACCEL", accel))
    ours, bare = [], []
    try:
        for i in range(args.runs):  # alternate, so drift hits both sides alike
            bare.append(bare_run(image, accel, work))
            ours.append(sandboxer_run(env))
            print(f"run {i + 1}: sandboxer create {ours[-1]:6.2f}s   bare qemu {bare[-1]:6.2f}s"
                  f"   ratio {ours[-1] / bare[-1]:.3f}")
        paused, raw = pause_run(env, args.pause_cycles) if args.pause_cycles else ([], [])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result: dict[str, Any] = {"accel": accel, "accel_reason": why}
    if ours:
        ratio = statistics.median(ours) / statistics.median(bare)
        verdict = "ok" if ratio <= 1.1 else "ABOVE TARGET"
        print(f"median: sandboxer {statistics.median(ours):.2f}s, bare "
              f"{statistics.median(bare):.2f}s, ratio {ratio:.3f} (target <= 1.1: {verdict})")
        result.update(sandboxer_s=ours, bare_s=bare, ratio=ratio)
    if paused:
        p_ratio = statistics.median(paused) / statistics.median(raw)
        print(f"pause+resume ({len(paused)} cycles): manager "
              f"{statistics.median(paused) * 1000:.1f} ms, raw QMP stop+cont "
              f"{statistics.median(raw) * 1000:.1f} ms, ratio {p_ratio:.1f}")
        result.update(pause_resume_s=paused, raw_qmp_s=raw, pause_ratio=p_ratio)
    kvm = "KVM works: VMs boot with KVM" if accel == "kvm" else f"KVM unavailable: {why}; TCG only"
    print(kvm)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
