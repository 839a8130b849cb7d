"""The dashboard of `sandboxer serve` in a real browser: Playwright driving Debian's
chromium against a real server process over the test-only ext.fake (the browser, the
server, the CLI and the store are real; the sandboxes cost nothing).

One server, one browser and one sequence, to stay cheap in CI: a bad token is refused;
alice, bob and an admin sign in (one browser context each); sandboxes created through the
CLI appear on the open pages without a reload; alice never sees bob's (not in her list,
not by its URL, not in her events); the copy button copies the descriptor's SSH command;
a snapshot appears on the open snapshots page; extend moves the countdown; the pages
read and the forms work without JavaScript; destroy removes the sandbox. A screenshot of
each page is written under the test's temporary directory and its path printed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.api_support import add_token
from tests.integration.api.conftest import Serve, serve_env
from tests.integration.conftest import SANDBOXER

from sandboxer.config import Settings

pytestmark = pytest.mark.integration

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
WAIT_MS = 15_000  # a live update arrives within the stream's 1 s poll; this is the bound
POOL_PROFILE = ("id: profile.warm\ndescription: kept warm\nextension: ext.fake\n"
                "pool: {size: 1, max_age: 30m}\nspec: {}\n")

playwright_api = pytest.importorskip("playwright.sync_api",
                                     reason="pip install playwright (the dev extra)")
if not CHROMIUM.exists():
    pytest.skip("no /usr/bin/chromium: apt-get install chromium (scripts/deps.sh)",
                allow_module_level=True)


def cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run([SANDBOXER, *args, "--json"], env=env, capture_output=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def seconds(countdown: str) -> int:
    """``1h 29m`` / ``29m 58s`` / ``2d 03h`` as seconds."""
    units = {"d": 86_400, "h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([dhms])", countdown)
    assert parts, f"not a countdown: {countdown!r}"
    return sum(int(n) * units[u] for n, u in parts)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Serve, dict[str, str]]]:
    env = serve_env(tmp_path / "home", HOME=str(tmp_path / "user"))
    (tmp_path / "fake-profiles" / "warm.yaml").write_text(POOL_PROFILE)
    srv = Serve(env, tmp_path / "serve.log")
    try:
        yield srv, env
    finally:
        srv.stop()


def test_the_dashboard_in_chromium(server: tuple[Serve, dict[str, str]],
                                   tmp_path: Path) -> None:
    srv, env = server
    settings = Settings.from_env(env)
    tokens = {a: add_token(settings, a, admin=a == "root") for a in ("alice", "bob", "root")}

    def api_get(sandbox_id: str) -> dict[str, Any]:
        got = httpx.get(f"{srv.url}/v1/sandboxes/{sandbox_id}",
                        headers={"Authorization": f"Bearer {tokens['root']}"})
        assert got.status_code == 200, got.text
        doc: dict[str, Any] = got.json()
        return doc
    shots = tmp_path / "screenshots"
    shots.mkdir()

    def shot(page: Any, name: str) -> None:
        path = shots / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        print(f"screenshot: {path}")  # noqa: T201 - the test's report

    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        try:
            contexts = {a: browser.new_context(base_url=srv.url,
                                               viewport={"width": 1280, "height": 720})
                        for a in tokens}
            pages = {a: c.new_page() for a, c in contexts.items()}
            alice, bob, root = pages["alice"], pages["bob"], pages["root"]

            # A bad token: refused with 401, still on the sign-in page, no session.
            alice.goto("/")
            assert alice.url.startswith(f"{srv.url}/sign-in")
            shot(alice, "sign-in")
            alice.fill("#token", "sbxt_not-a-token")
            with alice.expect_response(lambda r: r.request.method == "POST") as refused:
                alice.click("button[type=submit]")
            assert refused.value.status == 401
            assert "not valid" in alice.inner_text("[role=alert]")
            assert not [c for c in contexts["alice"].cookies()
                        if c["name"] == "sandboxer_session"]
            shot(alice, "sign-in-refused")

            for actor, page in pages.items():
                page.goto("/")
                page.fill("#token", tokens[actor])
                page.click("button[type=submit]")
                page.wait_for_url(f"{srv.url}/")
                assert page.inner_text(".actor").startswith(actor)
                page.wait_for_selector("#live.on", timeout=WAIT_MS)  # the stream is open
                page.evaluate("window.notReloaded = true")
            (cookie,) = [c for c in contexts["alice"].cookies()
                         if c["name"] == "sandboxer_session"]
            assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")

            # Created through the CLI (the server's store, another process): each appears
            # on its owner's and the admin's open page without a reload, never on another's.
            theirs = cli(env, "create", "profile.fake", "--actor", "bob", "--ttl", "30m")
            mine = cli(env, "create", "profile.fake", "--actor", "alice", "--ttl", "30m",
                       "--label", "team=a")
            for page, ids in ((alice, [mine["id"]]), (bob, [theirs["id"]]),
                              (root, [mine["id"], theirs["id"]])):
                for sid in ids:
                    page.wait_for_selector(f"#row-{sid}", timeout=WAIT_MS)
                assert page.evaluate("window.notReloaded") is True
            assert alice.locator(f"#row-{theirs['id']}").count() == 0
            assert bob.locator(f"#row-{mine['id']}").count() == 0
            row = alice.inner_text(f"#row-{mine['id']}")
            for shown in ("ready", "profile.fake", "ext.fake", "fake-1", "alice", "team=a"):
                assert shown in row
            shot(alice, "sandboxes")
            shot(root, "sandboxes-admin")

            # Not by its URL either: another actor's sandbox answers like an unknown one.
            answer = alice.goto(f"/sandboxes/{theirs['id']}")
            assert answer is not None
            assert answer.status == 404
            alice.goto("/events")
            events = alice.inner_text("#events")
            assert mine["id"] in events
            assert theirs["id"] not in events
            assert "sandbox.ready" in events
            shot(alice, "events")

            # One sandbox: its descriptor, the copy button, its timeline.
            contexts["alice"].grant_permissions(["clipboard-read", "clipboard-write"])
            alice.goto(f"/sandboxes/{mine['id']}")
            assert alice.inner_text("#ssh-command") == mine["reachability"]["ssh_command"]
            assert f"Host {mine['id']}" in alice.inner_text("#ssh-config")
            alice.click("button[data-copy=ssh-command]")
            alice.wait_for_selector("button[data-copy=ssh-command]:has-text('Copied')")
            copied = alice.evaluate("navigator.clipboard.readText()")
            assert copied == mine["reachability"]["ssh_command"]
            assert "sandbox.created" in alice.inner_text("#timeline")
            shot(alice, "sandbox")

            # A snapshot taken through the CLI meanwhile appears on the open page.
            alice.goto("/snapshots")
            alice.evaluate("window.notReloaded = true")
            snap = cli(env, "snapshot", mine["id"], "--name", "before-extend")["id"]
            alice.wait_for_selector(f"#snap-row-{snap}", timeout=WAIT_MS)
            assert alice.evaluate("window.notReloaded") is True
            assert "before-extend" in alice.inner_text(f"#snap-row-{snap}")
            shot(alice, "snapshots")
            alice.goto(f"/sandboxes/{mine['id']}")

            # Extend moves the countdown (30m lease -> 90m from now).
            before = seconds(alice.inner_text("#sandbox .lease"))
            assert 25 * 60 < before <= 30 * 60
            alice.fill("input[name=ttl]", "90m")
            alice.click("button[value=extend]")
            alice.wait_for_url(f"{srv.url}/sandboxes/{mine['id']}")
            after = seconds(alice.inner_text("#sandbox .lease"))
            assert after > before + 55 * 60
            alice.wait_for_selector("#timeline :text('sandbox.extended')", timeout=WAIT_MS)
            assert api_get(mine["id"])["expires_at"] > mine["expires_at"]

            # Without JavaScript the pages still read and the forms still work.
            plain = browser.new_context(base_url=srv.url, java_script_enabled=False)
            noscript = plain.new_page()
            noscript.goto("/")
            noscript.fill("#token", tokens["alice"])
            noscript.click("button[type=submit]")
            noscript.wait_for_url(f"{srv.url}/")
            assert mine["id"] in noscript.inner_text("#sandboxes")
            noscript.goto(f"/sandboxes/{mine['id']}")
            assert noscript.inner_text("#ssh-command") == mine["reachability"]["ssh_command"]
            assert not noscript.is_visible("button[data-copy=ssh-command]")
            shown = seconds(noscript.inner_text("#sandbox .lease"))  # rendered by the server
            noscript.fill("input[name=ttl]", "100m")
            noscript.click("button[value=extend]")
            noscript.wait_for_url(f"{srv.url}/sandboxes/{mine['id']}")
            assert seconds(noscript.inner_text("#sandbox .lease")) > shown + 5 * 60
            plain.close()

            # Destroy removes it: from the list here, and live from the admin's open page.
            root.evaluate("window.notReloaded = true")
            alice.once("dialog", lambda dialog: dialog.accept())
            alice.click("button[value=destroy]")
            alice.wait_for_url(f"{srv.url}/")
            assert alice.locator(f"#row-{mine['id']}").count() == 0
            root.wait_for_selector(f"#row-{mine['id']}", state="detached", timeout=WAIT_MS)
            assert root.evaluate("window.notReloaded") is True
            assert api_get(mine["id"])["state"] == "destroyed"

            # Targets with health and capacity used; the warm pool the leader filled.
            root.goto("/targets")
            assert "fake-1" in root.inner_text("#targets")
            shot(root, "targets")
            root.goto("/pools")
            root.wait_for_selector("#pools :text('profile.warm')")
            shot(root, "pools")

            # Signing out ends the session: the list is the sign-in page again.
            bob.click("text=Sign out")
            bob.wait_for_url(re.compile(r".*/sign-in.*"))
            bob.goto("/")
            assert bob.url.startswith(f"{srv.url}/sign-in")
        finally:
            browser.close()
    assert sorted(p.name for p in shots.iterdir()) == [
        "events.png", "pools.png", "sandbox.png", "sandboxes-admin.png", "sandboxes.png",
        "sign-in-refused.png", "sign-in.png", "snapshots.png", "targets.png"]
    assert os.path.getsize(shots / "sandboxes.png") > 10_000
