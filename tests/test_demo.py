"""`make demo`'s program, run as a user runs it: a scripted login with a demo account through
the real hub ends with an auth_state whose alias token the emulator validates as that user."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.world.browser import HubBrowser
from tests.world.hub import port_is_listening
from tests.world.idp_login import login_via_idp

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.demo", "--port", "0", "--workdir", str(workdir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    # The banner's last line is the signal that everything is up (bounded by the hub's own start-up limits).
    for line in proc.stdout:
        lines.append(line)
        if "Press Ctrl-C" in line or len(lines) > 400:
            break
    assert (workdir / "demo.json").exists(), "".join(lines)
    state = json.loads((workdir / "demo.json").read_text())
    state["banner"] = "".join(lines)
    yield proc, state
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


async def validate_as(xnat_url, token) -> str | None:
    async with httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(
            f"{xnat_url}/data/services/tokens/validate/{token['alias']}/{token['secret']}",
            auth=(token["alias"], token["secret"]),
        )
        r.raise_for_status()
        return r.json()["valid"]


async def user_auth_state(state, name):
    async with httpx.AsyncClient(trust_env=False) as c:
        r = await c.get(
            f"{state['hub_url']}/hub/api/users/{name}",
            headers={"Authorization": f"token {state['hub_api_token']}"},
        )
        r.raise_for_status()
        return r.json()["auth_state"]


async def test_banner_prints_the_url_and_demo_passwords(demo):
    _, state = demo
    assert f"{state['hub_url']}/hub/login" in state["banner"]
    assert state["passwords"]["alice"] in state["banner"]
    assert state["hub_url"].startswith("http://127.0.0.1:")


async def test_demo_password_login_stores_a_token_xnat_validates_as_alice(demo):
    _, state = demo
    async with HubBrowser(state["hub_url"]) as b:
        resp = await b.password_login("alice", state["passwords"]["alice"])
        assert resp.status_code == 302, resp.text
        assert (await b.home()).status_code == 200
    token = (await user_auth_state(state, "alice"))["xnat"]["token"]
    assert await validate_as(state["xnat_url"], token) == "alice"


async def test_demo_aaf_login_stores_a_token_xnat_validates_as_that_user(demo):
    _, state = demo
    async with HubBrowser(state["hub_url"]) as b:
        resp = await login_via_idp(b.client, state["hub_url"] + "/hub/oauth_login", state["aaf_login"])
        assert resp.status_code == 302, resp.text
    name = state["aaf_username"]
    token = (await user_auth_state(state, name))["xnat"]["token"]
    assert await validate_as(state["xnat_url"], token) == name


def test_ctrl_c_stops_every_process_it_started(demo):
    proc, state = demo
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    for name, port in state["ports"].items():
        assert not port_is_listening(port), f"{name} still listening on {port}"
