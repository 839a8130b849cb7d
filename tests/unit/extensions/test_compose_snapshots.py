"""ext.compose-ssh snapshots and forwarding, the parts that need no engine: the image
configuration a commit gets, the sshd forwarding drop-in, the forward policy, the
override of a sandbox made from a snapshot."""

from __future__ import annotations

import io
import tarfile

import pytest

from sandboxer.errors import InvalidInput
from sandboxer.extensions.base import SnapshotArtifact
from sandboxer.extensions.compose_ssh import policy, snapshots
from sandboxer.extensions.compose_ssh.ready import FORWARD_DROPIN, forward_dropin, key_tarball


def test_a_commit_blanks_what_provision_added_and_restores_what_it_changed() -> None:
    container = {"Config": {
        "Labels": {"sandboxer.id": "sbx-abcdefghij", "com.docker.compose.project": "sbx-x",
                   "org.opencontainers.image.title": "base", "odd \"key\" $HOME": "v",
                   "changed": "theirs"},
        "Env": ["SANDBOXER_ID=sbx-abcdefghij", "PLAIN=plain value", "PATH=/mine",
                "LANG=C.UTF-8", "not a name=x"]}}
    image = {"Config": {"Labels": {"org.opencontainers.image.title": "base",
                                   "changed": "ours"},
                        "Env": ["PATH=/usr/bin:$x", "LANG=C.UTF-8"]}}
    changes = snapshots.config_changes(container, image, "snap-abcdefghij", "inst")
    assert changes == [
        'LABEL "changed"="ours" "com.docker.compose.project"="" '
        '"odd \\"key\\" \\$HOME"="" "sandboxer.id"="" "sandboxer.instance"="inst" '
        '"sandboxer.snapshot"="snap-abcdefghij"',
        'ENV PATH="/usr/bin:\\$x" PLAIN="" SANDBOXER_ID=""',
    ]


def test_the_content_hash_covers_the_image_and_every_volume() -> None:
    one = snapshots.content_hash("sha256:aa", {"data": "11", "cache": "22"})
    assert one == snapshots.content_hash("sha256:aa", {"cache": "22", "data": "11"})
    assert one.startswith("sha256:")
    assert len(one) == 7 + 64
    assert one != snapshots.content_hash("sha256:aa", {"data": "11", "cache": "23"})
    assert one != snapshots.content_hash("sha256:ab", {"data": "11", "cache": "22"})


def test_no_forwarding_unless_the_profile_lists_ports() -> None:
    assert "AllowTcpForwarding no\n" in forward_dropin(())
    assert "PermitOpen" not in forward_dropin(())
    text = forward_dropin([8080, 3000, 8080])
    assert "AllowTcpForwarding local\n" in text  # never remote (-R)
    assert ("PermitOpen localhost:3000 127.0.0.1:3000 [::1]:3000 localhost:8080 "
            "127.0.0.1:8080 [::1]:8080\n") in text
    assert "PermitListen none\n" in text


def test_the_drop_in_is_written_before_the_marker_sshd_waits_for() -> None:
    data = key_tarball(b"PRIVATE", "ssh-ed25519 AAAA x", (8080,))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = [m.name for m in tar.getmembers() if m.isfile()]
        dropin = tar.extractfile(FORWARD_DROPIN.lstrip("/"))
        assert dropin is not None
        assert b"127.0.0.1:8080" in dropin.read()
    assert names[0] == FORWARD_DROPIN.lstrip("/")
    assert names[-1] == "etc/sandboxer/ready"


@pytest.mark.parametrize("hosts", [["localhost:10.0.0.1"], ["LOCALHOST=10.0.0.1"],
                                   {"ip6-localhost": "10.0.0.1"}])
def test_a_forwarding_profile_cannot_point_localhost_elsewhere(hosts: object) -> None:
    cfg = {"services": {"main": {"extra_hosts": hosts}}}
    with pytest.raises(InvalidInput, match="extra_hosts"):
        policy.check_forward(cfg, "main", "profile p")
    policy.check_forward({"services": {"main": {"extra_hosts": ["db:10.0.0.2"]}}}, "main",
                         "profile p")


def test_a_sandbox_from_a_snapshot_runs_its_image_never_pulled() -> None:
    art = SnapshotArtifact(snapshot_id="snap-abcdefghij", extension="ext.compose-ssh",
                           data={"image": "sandboxer-snapshot:snap-abcdefghij",
                                 "user": "agent"})
    extra = {"services": {"main": {"labels": {"sandboxer.id": "sbx-new"}}}}
    snapshots.from_snapshot(extra, "main", art)
    main = extra["services"]["main"]
    assert (main["image"], main["pull_policy"]) == ("sandboxer-snapshot:snap-abcdefghij",
                                                    "never")
    assert main["labels"]["sandboxer.snapshot"] == ""  # nothing takes it for the snapshot
    assert snapshots.check_artifact(art, "ext.compose-ssh", "agent") == main["image"]
    with pytest.raises(InvalidInput, match="login user"):
        snapshots.check_artifact(art, "ext.compose-ssh", "sandbox")
    with pytest.raises(InvalidInput, match="not made by"):
        snapshots.check_artifact(art.model_copy(update={"extension": "ext.local"}),
                                 "ext.compose-ssh", "agent")
