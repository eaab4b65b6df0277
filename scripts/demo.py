"""``make demo``: a JupyterHub with XnatOAuthenticator, an AAF-like OpenID provider and the
XNAT emulator, wired as a facility would wire them.

Everything listens on 127.0.0.1 only. The demo accounts' passwords are random for each run
and printed. Ctrl-C stops every process this command started.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path

import secrets

import httpx

from tests.world.hub import HubProcess, free_port
from tests.world.oidc_provider import OidcProvider
from tests.world.xnat_emulator import XnatEmulator

REPO = Path(__file__).resolve().parents[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def hub_config(xnat_url: str, idp: OidcProvider, client_id: str, client_secret: str, hub_url: str) -> str:
    return f"""
c.JupyterHub.authenticator_class = "xnat-oauth"
c.XnatOAuthenticator.xnat_url = {xnat_url!r}
c.XnatOAuthenticator.xnat_site_name = "the xnat-oauth demo"
# The AAF preset, pointed at the local AAF-like provider instead of central.aaf.edu.au.
c.XnatOAuthenticator.oidc_provider = "aaf"
c.XnatOAuthenticator.oidc_issuer = {idp.issuer!r}
c.XnatOAuthenticator.client_id = {client_id!r}
c.XnatOAuthenticator.client_secret = {client_secret!r}
c.XnatOAuthenticator.oauth_callback_url = {hub_url + "/hub/oauth_callback"!r}
# The local provider's access tokens are opaque; its ID tokens are JWTs XNAT can verify.
c.XnatOAuthenticator.xnat_exchange_token = "id_token"
c.JupyterHub.default_url = "/hub/home"
"""


def seed_aaf_user(xnat: XnatEmulator, idp: OidcProvider, login: str, projects) -> str:
    """An AAF identity and its XNAT account, named as XNAT's OpenID plugin names it."""
    claims = idp.aaf_account(login, affiliation=("staff@example.edu.au",))
    name = f"aaf_{claims['sub']}"
    xnat.add_user(name, None, roles=["Jupyter"], first_name=login.capitalize(), email=claims["email"])
    for p in projects:
        xnat.grant(name, p)
    return name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="make demo", description=__doc__)
    ap.add_argument("--port", type=int, default=8000, help="hub port on 127.0.0.1 (default 8000, or a free one)")
    ap.add_argument("--workdir", type=Path, default=REPO / ".demo", help="scratch directory (recreated)")
    args = ap.parse_args(argv)

    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    port = args.port if args.port and _port_free(args.port) else free_port()

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    xnat = XnatEmulator.demo(args.workdir / "xnat")
    idp = hub = None
    try:
        idp = OidcProvider(args.workdir / "idp", profile="aaf").start()
        hub_url = f"http://127.0.0.1:{port}"
        client_id, client_secret = "xnat-oauth-demo", secrets.token_urlsafe(24)
        idp.add_client(client_id, client_secret, [hub_url + "/hub/oauth_callback"])
        jwks_uri = httpx.get(idp.discovery_url, trust_env=False).json()["jwks_uri"]
        xnat.enable_bearer("aaf", issuer=idp.issuer, jwks_url=jwks_uri, accepted_audiences=[client_id])
        aaf_name = seed_aaf_user(xnat, idp, "alice", ["DEMO_CT", "DEMO_MR"])

        cfg = hub_config(xnat.url, idp, client_id, client_secret, hub_url)
        hub = HubProcess(args.workdir / "hub", cfg, port=port).start()
        users = xnat.demo_passwords
        # For scripts and tests driving the demo; the scratch dir is git-ignored.
        state = args.workdir / "demo.json"
        state.touch(mode=0o600)
        state.write_text(json.dumps({
            "hub_url": hub.url, "xnat_url": xnat.url, "idp_issuer": idp.issuer,
            "passwords": users, "aaf_login": "alice", "aaf_username": aaf_name,
            "hub_api_token": hub.api_token,
            "ports": {"hub": hub.port, "xnat": xnat.port, "idp": idp.port, "proxy_api": hub.proxy_api_port},
        }))
        print(
            f"""
xnat-oauth demo is running (127.0.0.1 only).

  JupyterHub:          {hub.url}/hub/login
  AAF-like provider:   {idp.issuer}
  XNAT emulator:       {xnat.url}

"Log in with AAF": at the provider's form type login  alice  (any password), then consent.
  You become the XNAT user {aaf_name}
  (XNAT's OpenID plugin names users [providerId]_[sub], case preserved).

Or the XNAT password form:
  alice / {users['alice']}      (role Jupyter: gets in)
  bob   / {users['bob']}      (no Jupyter role: refused with a clear message)

Either way the hub's encrypted auth_state holds the user's own XNAT alias token
(never a password, never an admin's).
Logs: {hub.log_path}
Press Ctrl-C to stop everything.
""",
            flush=True,
        )
        while not stop.wait(3600):
            pass
    finally:
        print("Stopping the demo...", flush=True)
        if hub is not None:
            hub.stop()
        if idp is not None:
            idp.stop()
        xnat.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
