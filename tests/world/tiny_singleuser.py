"""A tiny real single-user server: what a spawner starts when the notebook itself is not the point.

``c.Spawner.cmd = [sys.executable, "/path/to/tests/world/tiny_singleuser.py"]`` with a
local-process spawner. It listens where JupyterHub told it (``JUPYTERHUB_SERVICE_URL``, on
127.0.0.1 only) and answers every GET with the user's name and the XNAT projects the spawn hook
linked into ``XNAT_DATA``, so a test can see that the hook's plan reached a real process. Standard
library only, one process per server, about 20 ms of CPU to start: 200 of them fit a 2-core
machine where 200 JupyterLabs would not.

It runs as a script, not a module: the spawner's environment has no ``PYTHONPATH`` to the
checkout.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


def _projects() -> list[str]:
    data = os.environ.get("XNAT_DATA", "")
    try:
        return sorted(os.listdir(os.path.join(data, "projects"))) if data else []
    except OSError:
        return []


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        body = json.dumps(
            {"user": os.environ.get("JUPYTERHUB_USER"), "projects": _projects(), "path": self.path}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main() -> int:
    url = urlsplit(os.environ["JUPYTERHUB_SERVICE_URL"])
    host = url.hostname or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost"):
        print(f"tiny_singleuser: refusing to listen on {host} (loopback only)", file=sys.stderr)
        return 2
    server = ThreadingHTTPServer(("127.0.0.1", url.port or 8888), _Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # the spawner's SIGINT
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
