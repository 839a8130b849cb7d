"""What a sandbox's compose project may ask for: an allow-list, checked twice.

`raw_violations` looks at the profile's document as written, for what interpolation cannot
create or `docker compose config` resolves away (keys: `env_file`, `build`, `extends`,
`include`). `resolved_violations` looks at what compose will really run: the output of
`docker compose config` on the target, with the target's environment, the override merged.
Every key outside the allow-list, and every value outside what the override itself sets, is
a violation naming the `--allow` entry that would grant it (docs/security.md).
"""

from __future__ import annotations

from typing import Any

from sandboxer.errors import InvalidInput

# Service keys that carry nothing beyond the container's own namespaces and limits.
_SAFE_SERVICE_KEYS = frozenset({
    "image", "command", "entrypoint", "environment", "labels", "healthcheck", "depends_on",
    "working_dir", "user", "hostname", "domainname", "stop_signal", "stop_grace_period",
    "restart", "tty", "stdin_open", "init", "expose", "tmpfs", "read_only",
    "container_name", "pull_policy", "mem_limit", "memswap_limit", "mem_reservation",
    "cpus", "cpu_shares", "cpu_quota", "cpu_period", "pids_limit", "shm_size",
    "extra_hosts", "dns", "dns_search", "dns_opt", "platform", "group_add", "scale",
    "profiles", "networks", "secrets", "configs", "cap_drop", "links", "deploy",
    "annotations", "attach",
})
# Service keys checked value by value below.
_CHECKED_SERVICE_KEYS = frozenset({
    "privileged", "network_mode", "pid", "ipc", "uts", "userns_mode", "cgroup",
    "cgroup_parent", "devices", "device_cgroup_rules", "cap_add", "security_opt", "volumes",
    "ports", "volumes_from", "external_links", "env_file", "build", "extends",
})
_TOP_KEYS = frozenset({"name", "version", "services", "volumes", "networks", "secrets",
                       "configs"})
_NO_NEW_PRIVS = frozenset({"no-new-privileges:true", "no-new-privileges=true",
                           "no-new-privileges"})
# Keys compose resolves away (or reads files for) on the client: refused as written.
_RAW_SERVICE_KEYS = {"env_file": "env-file", "build": "build", "extends": "extends"}

Found = list[tuple[str, str]]


def raw_violations(doc: dict[str, Any]) -> Found:
    """(allow entry, what) for keys refused as the profile wrote them."""
    found: Found = []
    for key in doc:
        if key == "include":
            found.append(("include", "include: other compose files"))
        elif key not in _TOP_KEYS and not str(key).startswith("x-"):
            found.append(("unlisted-keys", f"{key}: not an allowed top-level key"))
    for name, svc in doc["services"].items():
        for key, entry in _RAW_SERVICE_KEYS.items():
            if isinstance(svc, dict) and key in svc:
                found.append((entry, f"services.{name}.{key}"))
    return found


def _namespace(at: str, key: str, value: Any, host_entry: str, ok: set[str]) -> Found:
    if value is None or value in ok:
        return []
    if value == "host":
        return [(host_entry, f"{at}.{key}: the host's namespace")]
    return [("shared-namespaces", f"{at}.{key}: {value} (another container's namespace)")]


def _volumes(at: str, mounts: list[Any], own_binds: set[str], named: set[str]) -> Found:
    found: Found = []
    for m in mounts:
        if not isinstance(m, dict):
            found.append(("unlisted-keys", f"{at}.volumes: unexpected entry {m!r}"))
            continue
        kind, src = m.get("type"), str(m.get("source") or "")
        if kind == "bind" and src not in own_binds:
            if src.rstrip("/").endswith("docker.sock"):
                found.append(("docker-socket", f"{at}.volumes: the docker socket {src}"))
            else:
                found.append(("host-paths", f"{at}.volumes: host path {src}"))
        elif kind == "volume" and src and src not in named:
            found.append(("external-resources", f"{at}.volumes: volume {src}"))
        elif kind not in ("bind", "volume", "tmpfs"):
            found.append(("unlisted-keys", f"{at}.volumes: a {kind} mount"))
    return found


def _ports(at: str, ports: list[Any], own: list[dict[str, Any]]) -> Found:
    mine = [{k: str(p.get(k)) for k in ("target", "host_ip", "published")} for p in own]
    return [("ports", f"{at}.ports: {p.get('host_ip') or '0.0.0.0'}:"  # noqa: S104 - text
             f"{p.get('published') or '(any)'}->{p.get('target')}")
            for p in ports if not isinstance(p, dict)
            or {k: str(p.get(k)) for k in ("target", "host_ip", "published")} not in mine]


def _service(at: str, svc: dict[str, Any], *, caps: set[str], own: dict[str, Any],
             named: set[str]) -> Found:
    found: Found = []
    for key in svc:
        if key not in _SAFE_SERVICE_KEYS and key not in _CHECKED_SERVICE_KEYS:
            found.append(("unlisted-keys", f"{at}.{key}: not an allowed service key"))
    if svc.get("privileged"):
        found.append(("privileged", f"{at}.privileged: privileged mode"))
    if svc.get("userns_mode") or svc.get("cgroup_parent"):
        found.append(("privileged", f"{at}: userns_mode/cgroup_parent"))
    found += _namespace(at, "network_mode", svc.get("network_mode"), "host-network",
                        {"bridge", "none", "default"})
    found += _namespace(at, "pid", svc.get("pid"), "host-pid", set())
    found += _namespace(at, "ipc", svc.get("ipc"), "host-ipc", {"private", "shareable", "none"})
    found += _namespace(at, "uts", svc.get("uts"), "host-network", set())
    if svc.get("cgroup") not in (None, "private"):
        found.append(("host-cgroup", f"{at}.cgroup: {svc['cgroup']}"))
    for key in ("devices", "device_cgroup_rules"):
        if svc.get(key):
            found.append(("devices", f"{at}.{key}: {svc[key]}"))
    reservations = ((svc.get("deploy") or {}).get("resources") or {}).get("reservations")
    if isinstance(reservations, dict) and reservations.get("devices"):
        found.append(("devices", f"{at}.deploy.resources.reservations.devices"))
    extra = sorted(set(svc.get("cap_add") or []) - caps)
    if extra:
        found.append(("extra-capabilities", f"{at}.cap_add: {extra}"))
    if "ALL" not in (svc.get("cap_drop") or []):
        found.append(("extra-capabilities", f"{at}.cap_drop: not ALL"))
    for opt in svc.get("security_opt") or []:
        if str(opt) not in _NO_NEW_PRIVS:
            found.append(("privileged", f"{at}.security_opt: {opt}"))
    if not set(svc.get("security_opt") or []) & _NO_NEW_PRIVS:
        found.append(("privileged", f"{at}.security_opt: no no-new-privileges"))
    found += _volumes(at, svc.get("volumes") or [], set(own.get("binds", [])), named)
    found += _ports(at, svc.get("ports") or [], own.get("ports", []))
    for key in ("volumes_from", "external_links"):
        if svc.get(key):
            found.append(("shared-namespaces", f"{at}.{key}: {svc[key]}"))
    for key, entry in _RAW_SERVICE_KEYS.items():
        if svc.get(key):
            found.append((entry, f"{at}.{key}"))
    return found


def _resources(kind: str, doc: dict[str, Any], project: str) -> Found:
    found: Found = []
    for key, res in (doc.get(kind) or {}).items():
        at = f"{kind}.{key}"
        res = res or {}
        for k in res:
            if k not in ("name", "labels", "driver", "driver_opts", "external", "ipam",
                         "internal", "attachable", "enable_ipv6", "file", "content",
                         "environment"):
                found.append(("unlisted-keys", f"{at}.{k}: not an allowed key"))
        if res.get("external"):
            found.append(("external-resources", f"{at}: external {res.get('name', key)}"))
        elif kind in ("volumes", "networks") and res.get("name", f"{project}_{key}") \
                != f"{project}_{key}":
            found.append(("external-resources", f"{at}.name: {res['name']}"))
        if kind in ("volumes", "networks") and (
                res.get("driver_opts") or res.get("driver") not in (None, "local", "bridge")):
            found.append(("driver-opts", f"{at}: driver {res.get('driver') or 'default'} "
                          f"with options {res.get('driver_opts') or {}}"))
        if kind in ("secrets", "configs") and res.get("file"):
            found.append(("host-files", f"{at}.file: {res['file']}"))
    return found


def resolved_violations(cfg: dict[str, Any], *, project: str, main: str,
                        caps: list[str], own: dict[str, Any]) -> Found:
    """(allow entry, what) for each thing in `docker compose config` output outside the
    allow-list. ``own``: what the override itself adds to the main service (``ports``, a
    list of ``{target, host_ip, published}``; ``binds``, host paths)."""
    found: Found = []
    for key in cfg:
        if key not in _TOP_KEYS and not str(key).startswith("x-"):
            found.append(("unlisted-keys", f"{key}: not an allowed top-level key"))
    named = set(cfg.get("volumes") or {})
    for name, svc in (cfg.get("services") or {}).items():
        mine = name == main
        found += _service(f"services.{name}", svc or {}, caps=set(caps) if mine else set(),
                          own=own if mine else {}, named=named)
    for kind in ("volumes", "networks", "secrets", "configs"):
        found += _resources(kind, cfg, project)
    return found


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost",
                             "ip6-loopback"})


def check_forward(cfg: dict[str, Any], main: str, where: str) -> None:
    """Refuse `extra_hosts` that give a loopback name another address in the main service:
    sshd resolves the `localhost` of a forward (PermitOpen) in the container, and would
    then connect wherever that entry points."""
    hosts = ((cfg.get("services") or {}).get(main) or {}).get("extra_hosts") or []
    if isinstance(hosts, dict):
        names = [str(k) for k in hosts]
    else:
        names = [str(h).replace("=", ":", 1).split(":", 1)[0] for h in hosts]
    bad = sorted({n for n in names if n.strip().lower() in _LOOPBACK_NAMES})
    if bad:
        raise InvalidInput(
            f"{where}: services.{main}.extra_hosts names {', '.join(bad)}, and the profile "
            "forwards ports (reachability.forward): a forward to localhost would then "
            "leave the sandbox", hint="remove those extra_hosts entries")
