"""The hub's record of each server's XNAT tokens (xnat_oauth.server_tokens) against the emulator,
and the notebook client's packaging: standard library only, installable alone."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from jupyterhub.crypto import CryptKeeper

from xnat_oauth import server_tokens
from xnat_oauth.server_tokens import ServerTokenRefused, ServerTokenStore, invalidate, mint, release
from xnat_oauth.xnat_client import XnatClient

REPO = Path(__file__).resolve().parents[1]
CLIENT = REPO / "token-client"
needs_wheel = pytest.mark.skipif(os.environ.get("XNAT_OAUTH_TEST_INSTALLED") != "1",
                                 reason="an editable run: `make test` runs this against the built wheel")


@pytest.fixture
def keeper():
    return CryptKeeper(keys=[os.urandom(32)])


@pytest.fixture
async def client(xnat):
    async with XnatClient(xnat.url, timeout=5, read_retries=0) as c:
        yield c


def login_of(xnat, name):
    tok = xnat.mint_token(name)
    return server_tokens.XnatToken(tok["alias"], tok["secret"], tok["estimatedExpirationTime"] / 1000)


async def test_mint_gives_a_new_token_of_the_same_user(xnat, client):
    xnat.add_user("alice", "pw", roles=["Jupyter"])
    login = login_of(xnat, "alice")
    token = await mint(client, login, "alice")
    assert token.alias != login.alias and xnat.token_owner(token.alias, token.secret) == "alice"
    # XNAT's AliasTokenRestlet issues for whoever authenticated, by a token too
    assert [c.auth_kind for c in xnat.calls if c.endpoint == "tokens.issue"] == ["basic-token"]
    xnat.revoke_token(login.alias)
    with pytest.raises(ServerTokenRefused):
        await mint(client, login, "alice")


async def test_the_secret_is_encrypted_on_disk_and_survives_a_new_process(xnat, client, keeper, tmp_path):
    xnat.add_user("alice", "pw", roles=["Jupyter"])
    token = await mint(client, login_of(xnat, "alice"), "alice")
    path = tmp_path / "state.sqlite"
    store = ServerTokenStore(path, keeper=keeper)
    await store.start_server("alice", "", url=client.url, api_token="a" * 64, token=token)
    store.close()
    assert token.secret.encode() not in path.read_bytes() and b"a" * 64 not in path.read_bytes()
    # a hub restart: a new store on the same file and key
    again = ServerTokenStore(path, keeper=keeper)
    assert again.server_by_api_token("a" * 64).server == ""
    assert (await again.current("alice", "")).token == token
    # another key cannot read it: nobody can use that token, the hub says so and goes on
    assert await ServerTokenStore(path, keeper=CryptKeeper(keys=[os.urandom(32)])).current("alice", "") is None
    assert await release(again, client, "alice", "") == 1
    assert xnat.token_owner(token.alias, token.secret) is None
    assert again.server("alice", "") is None and await again.retiring("alice") == []


async def test_a_replaced_token_is_kept_until_xnat_has_ended_it(xnat, client, keeper, tmp_path):
    xnat.add_user("alice", "pw", roles=["Jupyter"])
    login = login_of(xnat, "alice")
    store = ServerTokenStore(tmp_path / "s.sqlite", keeper=keeper)
    first = await mint(client, login, "alice")
    await store.start_server("alice", "lab", url=client.url, api_token="t" * 64, token=first)
    second = await mint(client, login, "alice")
    (old,) = await store.replace_token("alice", "lab", second)
    assert old.alias == first.alias and (await store.current("alice", "lab")).alias == second.alias
    xnat.go_down()
    try:
        assert await invalidate(store, client, [old]) == 0
    finally:
        xnat.come_up()
    assert [t.alias for t in await store.retiring("alice")] == [first.alias], "kept for a later try"
    # the next stop of any of alice's servers tries it again
    assert await release(store, client, "alice", "lab") == 2
    assert xnat.token_owner(first.alias, first.secret) is None and xnat.token_owner(second.alias, second.secret) is None
    assert await store.retiring("alice") == []


async def test_tokens_for_another_xnat_are_never_sent(xnat, client, keeper, tmp_path):
    xnat.add_user("alice", "pw", roles=["Jupyter"])
    token = await mint(client, login_of(xnat, "alice"), "alice")
    store = ServerTokenStore(tmp_path / "s.sqlite", keeper=keeper)
    await store.start_server("alice", "", url="https://other.example.org", api_token=None, token=token)
    before = xnat.count("tokens.invalidate")
    await release(store, client, "alice", "")
    assert xnat.count("tokens.invalidate") == before and xnat.token_owner(token.alias, token.secret) == "alice"


async def test_expired_retiring_tokens_are_pruned(keeper, tmp_path):
    now = [1000.0]
    store = ServerTokenStore(tmp_path / "s.sqlite", keeper=keeper, clock=lambda: now[0])
    tok = server_tokens.XnatToken("a1", "s" * 64, 1100.0)
    await store.start_server("bob", "", url="https://x", api_token=None, token=tok)
    await store.stop_server("bob", "")
    assert store.prune() == 0
    now[0] = 1200.0
    assert store.prune() == 1 and await store.retiring("bob") == []


# -- the notebook client -------------------------------------------------------------------


def test_the_client_needs_nothing_but_the_standard_library():
    for source in (CLIENT / "xnat_oauth_token").glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top == "__future__", f"{source.name} imports {name}"


def test_the_client_runs_on_the_standard_library_alone():
    """``-S``: no site-packages at all, only the client's own directory."""
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(CLIENT)}
    run = subprocess.run([sys.executable, "-S", "-m", "xnat_oauth_token", "--json"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "not in a JupyterHub server" in run.stderr, run.stderr


@needs_wheel
def test_the_client_wheel_installs_alone(tmp_path):
    """What a single-user image does: the client's wheel by itself, no dependency, a command."""
    (wheel,) = (Path(os.environ["XNAT_OAUTH_SOURCE"]) / "dist").glob("xnat_oauth_token-*-py3-none-any.whl")
    target = tmp_path / "site"
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                                "--target", str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-S", "-c",
                          "import sys; from importlib.metadata import distribution as d; m = d('xnat-oauth-token'); "
                          "print(m.requires); print([e.value for e in m.entry_points if e.name == 'xnat-token'])"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert run.stdout.split("\n")[:2] == ["None", "['xnat_oauth_token:main']"], run.stdout + run.stderr
    assert (target / "bin" / "xnat-token").exists()


def test_the_client_renews_when_due_and_keeps_a_token_while_the_hub_refuses(tmp_path, monkeypatch):
    """The client's own rules, against a hub that answers from a script (no network)."""
    import xnat_oauth_token as client

    now = time.time()
    answers = []
    calls = []

    def fake_call(self, method):
        calls.append(method)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(client._Server, "call", fake_call)
    env = {"JUPYTERHUB_API_TOKEN": "t" * 32, "JUPYTERHUB_API_URL": "http://127.0.0.1:1/hub/api",
           "XNAT_HOST": "http://xnat", "XNAT_USER": "a0", "XNAT_PASS": "s0",
           "XNAT_TOKEN_EXPIRES": str(int(now + 100)), "XNAT_TOKEN_DIR": str(tmp_path / "d")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    answers.append({"user": "a0", "password": "s0", "expires_at": now + 100, "renew_at": now + 75})
    assert client.get_token().user == "a0" and calls == ["GET"]
    # due: a new one
    answers.append({"user": "a1", "password": "s1", "expires_at": now + 200, "renew_at": now - 1})
    assert client.get_token(min_valid=150).user == "a1" and calls[-1] == "POST"
    # due again, refused: the current token, with the hub's reason, and no question for a minute
    answers.append(client._Refused(403, "session_ended", "Your hub session has ended."))
    with pytest.warns(client.RenewalWarning, match="hub session has ended"):
        assert client.get_token().user == "a1"
    n = len(calls)
    with pytest.warns(client.RenewalWarning):
        assert client.get_token().user == "a1"
    assert len(calls) == n
    assert oct((tmp_path / "d").stat().st_mode & 0o777) == "0o700"
    (state,) = (tmp_path / "d").glob("server-*.json")
    assert oct(state.stat().st_mode & 0o777) == "0o600"
