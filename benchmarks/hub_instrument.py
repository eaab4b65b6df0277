"""Instruments a benchmarked hub from inside its process (its ``jupyterhub_config.py`` calls it).

* :func:`count_requests` appends one line ``METHOD scheme://host:port/path`` per outgoing HTTP
  request, whether it goes through tornado's ``AsyncHTTPClient`` (oauthenticator's token and
  userinfo calls) or an ``httpx.AsyncClient`` (discovery, JWKS, XNAT). Queries are dropped: they
  can carry codes, and the path is all a count needs.
* :func:`profile_on_signal` lets the benchmark profile just its timed windows: ``SIGUSR2``
  starts cProfile on the hub's event-loop thread, the next ``SIGUSR2`` stops it and writes the
  stats (accumulated over every window so far).

Both wrap library methods for the life of the process: never import this outside a benchmark hub.
"""

from __future__ import annotations

import cProfile
import signal
from pathlib import Path
from urllib.parse import urlsplit


def _without_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def count_requests(path: str | Path) -> None:
    """Log every outgoing HTTP request of this process to ``path`` (one line each, appended)."""
    import httpx
    from tornado.httpclient import AsyncHTTPClient, HTTPRequest

    # line-buffered: the benchmark reads the file while the hub runs
    out = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - open for the process's life

    tornado_fetch = AsyncHTTPClient.fetch

    def fetch(self, request, raise_error=True, **kwargs):
        if isinstance(request, HTTPRequest):
            method, url = request.method, request.url
        else:
            method, url = kwargs.get("method", "GET"), request
        out.write(f"{method} {_without_query(url)}\n")
        return tornado_fetch(self, request, raise_error=raise_error, **kwargs)

    httpx_send = httpx.AsyncClient.send

    async def send(self, request, **kwargs):
        out.write(f"{request.method} {_without_query(str(request.url))}\n")
        return await httpx_send(self, request, **kwargs)

    AsyncHTTPClient.fetch = fetch
    httpx.AsyncClient.send = send


def profile_on_signal(stats_path: str | Path) -> None:
    """Each SIGUSR2 toggles cProfile; turning it off writes the stats so far to ``stats_path``.

    SIGUSR2 because JupyterHub takes SIGUSR1 (it logs its status).
    """
    # Wall time (the default timer): a CPU-time timer costs a system call per event and would
    # multiply the hub's work. Waiting shows up apart, as select.epoll.poll; blocking work done
    # on the event loop (sqlite's commit) shows up too, which is what limits throughput.
    profiler = cProfile.Profile()
    running = False

    def toggle(*_):
        nonlocal running
        if running:
            profiler.disable()
            profiler.dump_stats(str(stats_path))
        else:
            profiler.enable()
        running = not running

    # Python runs signal handlers on the main thread, which is the hub's event loop.
    signal.signal(signal.SIGUSR2, toggle)
