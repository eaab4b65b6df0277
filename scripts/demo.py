"""``make demo``: a JupyterHub with XnatOAuthenticator in front of the XNAT emulator.

Everything listens on 127.0.0.1 only. The demo accounts' passwords are random for each run
and printed. Ctrl-C stops every process this command started.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path

from tests.world.hub import HubProcess
from tests.world.xnat_emulator import XnatEmulator

REPO = Path(__file__).resolve().parents[1]


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def hub_config(xnat_url: str) -> str:
    return f"""
c.JupyterHub.authenticator_class = "xnat-oauth"
c.XnatOAuthenticator.xnat_url = {xnat_url!r}
c.XnatOAuthenticator.xnat_site_name = "the xnat-oauth demo"
c.JupyterHub.default_url = "/hub/home"
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="make demo", description=__doc__)
    ap.add_argument("--port", type=int, default=8000, help="hub port on 127.0.0.1 (default 8000, or a free one)")
    ap.add_argument("--workdir", type=Path, default=REPO / ".demo", help="scratch directory (recreated)")
    args = ap.parse_args(argv)

    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    port = args.port if _port_free(args.port) else None

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    xnat = XnatEmulator.demo(args.workdir / "xnat")
    hub = None
    try:
        hub = HubProcess(args.workdir / "hub", hub_config(xnat.url), port=port).start()
        users = xnat.demo_passwords
        print(
            f"""
xnat-oauth demo is running (127.0.0.1 only).

  JupyterHub:     {hub.url}/hub/login
  XNAT emulator:  {xnat.url}

Log in with the XNAT password form:
  alice / {users['alice']}      (role Jupyter: gets in)
  bob   / {users['bob']}      (no Jupyter role: refused with a clear message)

After login, the hub's auth_state holds alice's own XNAT alias token (never a password).
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
        xnat.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
