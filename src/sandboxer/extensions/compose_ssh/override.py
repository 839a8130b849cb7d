"""The compose document a sandbox runs: the profile's file, checked, plus our override.

The override labels every service and named volume, publishes the main service's SSH port
on a pinned host port, passes setup env, and locks every service down (no new privileges,
all capabilities dropped — the main service keeps what sshd needs —, pids and memory
limits). It never grants privileged mode, host namespaces, devices or host paths; a profile
asking for any of those is refused unless the target's operator allow-list permits it
(`policy`: checked as written, then as `docker compose config` resolves it on the target).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sandboxer.errors import InvalidInput
from sandboxer.extensions.base import LABEL
from sandboxer.extensions.compose_ssh import policy
from sandboxer.extensions.compose_ssh import secrets as cs
from sandboxer.extensions.compose_ssh.spec import ComposeSpec

INSTANCE_LABEL = "sandboxer.instance"
# Limits of every service whose profile sets none (spec.resources sets them for all).
DEFAULT_PIDS = 4096
DEFAULT_MEMORY = "4g"
# What sshd needs with `cap_drop: [ALL]` and `no-new-privileges`, measured one at a time
# (images/sandbox-base/README.md): AUDIT_WRITE for PTY sessions, SYS_CHROOT for privilege
# separation, SETUID/SETGID/CHOWN to become the user and own its tty. NET_BIND_SERVICE only
# matters on engines older than 20.10, which do not let containers bind port 22 without it.
SSHD_CAPS = ["CHOWN", "SETUID", "SETGID", "SYS_CHROOT", "AUDIT_WRITE", "NET_BIND_SERVICE"]
# The SSH key material lives in named volumes of the project, not in the main container's
# own filesystem: `docker commit` (a snapshot) leaves mounts out, so no snapshot image
# holds a sandbox's host key, and a restarted container still finds its keys.
KEY_VOLUMES = {"sandboxer-keys": "/etc/sandboxer", "sandboxer-sshd-keys": "/etc/ssh/sandboxer"}


def load(spec: ComposeSpec, source: Path | None, where: str) -> dict[str, Any]:
    """The profile's compose document, parsed (a syntax error is InvalidInput)."""
    if spec.compose is not None or spec.compose_file is None:
        doc: Any = spec.compose
        origin = f"{where}: spec.compose"
    else:
        path = Path(spec.compose_file)
        if not path.is_absolute() and source is not None:
            path = source.parent / path
        origin = str(path)
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise InvalidInput(f"{where}: spec.compose_file: cannot read {path}: {e.strerror}"
                               ) from e
        except UnicodeDecodeError as e:
            raise InvalidInput(f"{path}: not UTF-8 text") from e
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise InvalidInput(f"{path}:{at}: invalid YAML: "
                               f"{getattr(e, 'problem', None) or e}") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict) \
            or not doc["services"]:
        raise InvalidInput(f"{origin}: expected a compose document with a `services` mapping")
    if spec.service not in doc["services"]:
        raise InvalidInput(
            f"{where}: spec.service: no service {spec.service!r} in {origin}; "
            f"expected one of {', '.join(sorted(doc['services']))}"
        )
    return doc


def _host_source(volume: Any) -> str | None:
    """The host path a service volume binds, if any."""
    if isinstance(volume, str):
        src = volume.split(":", 1)[0] if ":" in volume else ""
        return src if src.startswith(("/", ".", "~")) else None
    if isinstance(volume, dict) and volume.get("type") == "bind":
        return str(volume.get("source", ""))
    return None


def violations(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """(allow-list entry, key path: what) for each dangerous setting in the document."""
    found: list[tuple[str, str]] = []
    for name, svc in doc["services"].items():
        if not isinstance(svc, dict):
            continue
        at = f"services.{name}"
        if svc.get("privileged"):
            found.append(("privileged", f"{at}.privileged: privileged mode"))
        for key, what in (("network_mode", "host-network"), ("pid", "host-pid"),
                          ("ipc", "host-ipc"), ("userns_mode", "privileged"),
                          ("uts", "host-network")):
            if svc.get(key) == "host":
                found.append((what, f"{at}.{key}: the host's namespace"))
        if svc.get("devices"):
            found.append(("devices", f"{at}.devices: host devices"))
        if svc.get("cap_add"):
            found.append(("extra-capabilities", f"{at}.cap_add: {svc['cap_add']}"))
        for opt in svc.get("security_opt") or []:
            if "unconfined" in str(opt) or "no-new-privileges:false" in str(opt):
                found.append(("privileged", f"{at}.security_opt: {opt}"))
        for vol in svc.get("volumes") or []:
            src = _host_source(vol)
            if src is None:
                continue
            if src.rstrip("/").endswith("docker.sock"):
                found.append(("docker-socket", f"{at}.volumes: the docker socket {src}"))
            else:
                found.append(("host-paths", f"{at}.volumes: host path {src}"))
    return found


def check(doc: dict[str, Any], allow: list[str], where: str, target: str,
          found: list[tuple[str, str]] | None = None) -> None:
    """Refuse every violation the target's allow-list does not permit (``found``: those of
    the resolved document; by default the literal and raw checks of ``doc`` as written)."""
    if found is None:
        found = violations(doc) + policy.raw_violations(doc)
    refused = [(entry, what) for entry, what in found if entry not in allow]
    if refused:
        lines = "; ".join(what for _, what in refused)
        entries = sorted({e for e, _ in refused})
        raise InvalidInput(
            f"{where} asks for what target {target} does not allow: {lines}",
            hint="the target's operator may allow it with `sandboxer targets add ... "
            + " ".join(f"--allow {e}" for e in entries) + "` (for `local`: "
            f"SANDBOXER_COMPOSE_LOCAL_ALLOW={','.join(entries)}); see "
            "docs/extensions/compose-ssh.md",
        )


def _limits(svc: Any, spec: ComposeSpec) -> dict[str, Any]:
    """pids and memory limits for one service, in the form its profile uses (compose
    refuses `pids_limit` next to a different `deploy.resources.limits.pids`)."""
    r = spec.resources
    pids, memory = r.pids or DEFAULT_PIDS, r.memory or DEFAULT_MEMORY
    deploy = (svc.get("deploy") or {}) if isinstance(svc, dict) else {}
    limits = (deploy.get("resources") or {}).get("limits") or {}
    out: dict[str, Any] = {}
    if "pids" in limits or "memory" in limits:
        out["deploy"] = {"resources": {"limits": {"pids": pids, "memory": memory}}}
    else:
        out.update(pids_limit=pids, mem_limit=memory)
    if r.cpus is not None:
        out["cpus"] = r.cpus
    return out


def own(spec: ComposeSpec, bind: str, port: int) -> dict[str, Any]:
    """What the override adds to the main service that the policy would otherwise refuse."""
    return {"ports": [{"target": spec.ssh_port, "host_ip": bind, "published": port}],
            "binds": []}


def build(doc: dict[str, Any], spec: ComposeSpec, *, sandbox_id: str, instance: str,
          user: str, env: dict[str, str], bind: str, port: int, secrets: bool = False
          ) -> dict[str, Any]:
    """The override compose file for one sandbox: every service labelled, all capabilities
    dropped, no new privileges, pids and memory limited, restarted unless stopped; the
    main service's SSH port published on ``port`` of ``bind`` (pinned, so a restart keeps
    it); ``secrets``: add the /run/secrets tmpfs."""
    labels = {LABEL: sandbox_id, INSTANCE_LABEL: instance}
    services: dict[str, Any] = {}
    for name, svc in doc["services"].items():
        services[name] = {"labels": dict(labels), "security_opt": ["no-new-privileges:true"],
                          "cap_drop": ["ALL"], **_limits(svc, spec)}
        if spec.pull != "missing":
            services[name]["pull_policy"] = spec.pull
        theirs = svc.get("restart") if isinstance(svc, dict) else None
        if theirs in (None, "always"):
            # Back after a dockerd restart or a reboot (then bound again: `restarts`); a
            # `compose stop` keeps it stopped (`always` would start a stopped sandbox
            # again behind the store's back).
            services[name]["restart"] = "unless-stopped"
    main = services[spec.service]
    main["ports"] = [{"target": spec.ssh_port, "host_ip": bind, "published": str(port),
                      "protocol": "tcp"}]
    # Compose interpolates `$` on the target with the SSH user's environment: escape it.
    literal = {k: v.replace("$", "$$") for k, v in env.items()}
    main["environment"] = {**literal, "SANDBOXER_ID": sandbox_id, "SANDBOXER_USER": user,
                           "SANDBOXER_KEYS_WAIT": "120"}
    if secrets:
        cs.add_to_override(main)
    main.setdefault("volumes", []).extend(
        {"type": "volume", "source": name, "target": path} for name, path in KEY_VOLUMES.items())
    main["cap_add"] = list(SSHD_CAPS)
    out: dict[str, Any] = {"services": services}
    uses_default = any(not isinstance(s, dict) or ("networks" not in s
                       and "network_mode" not in s) for s in doc["services"].values())
    if uses_default:
        out["networks"] = {"default": {"labels": dict(labels)}}
    # Named volumes carry the labels too, so owned() finds one a killed create leaked.
    volumes = {name: {"labels": dict(labels)} for name, v in (doc.get("volumes") or {}).items()
               if not (isinstance(v, dict) and v.get("external"))}
    out["volumes"] = {**volumes, **{name: {"labels": dict(labels)} for name in KEY_VOLUMES}}
    return out


def named_volumes(doc: dict[str, Any]) -> list[str]:
    """The project's own named volumes (the profile's, not external), by compose key."""
    return sorted(name for name, v in (doc.get("volumes") or {}).items()
                  if not (isinstance(v, dict) and v.get("external")))


def dump(doc: dict[str, Any]) -> bytes:
    return yaml.safe_dump(doc, sort_keys=False).encode()
