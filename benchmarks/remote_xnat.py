"""The XNAT emulator in a process of its own, for the benchmarks that measure a hub's CPU.

In the benchmark's own process the emulator would share the client's interpreter, so its CPU
would be counted as the client's (and would slow the scripted browsers down).
"""

from __future__ import annotations

import collections
import multiprocessing
from pathlib import Path

from tests.world.xnat_emulator import ENDPOINTS, XnatEmulator

#: what a benchmark may ask of the emulator, besides the read-outs below
ALLOWED = frozenset({"add_user", "add_openid_account", "enable_bearer", "add_project", "store_user_options"})


def _serve_emulator(root: str, conn) -> None:
    """Child process: run an emulator and answer ``(method, args, kwargs)`` requests on ``conn``."""
    emu = XnatEmulator(root=Path(root)).start()
    conn.send(emu.url)
    try:
        while True:
            method, args, kwargs = conn.recv()
            if method == "stop":
                break
            if method == "calls":
                conn.send(collections.Counter({e: emu.count(e) for e in ENDPOINTS if emu.count(e)}))
            elif method == "sessions":
                conn.send(dict(emu.sessions_opened))
            elif method == "paths":
                conn.send({
                    "archive_prefix": emu.site_archive_path,
                    "archive_host_prefix": str(emu.archive_root),
                    "workspace_prefix": emu.site_workspace_path,
                    "workspace_host_prefix": str(emu.workspace_root),
                })
            elif method in ALLOWED:
                conn.send(getattr(emu, method)(*args, **kwargs))
            else:
                conn.send(ValueError(f"not allowed: {method}"))
    finally:
        emu.stop()


class RemoteXnat:
    """The XNAT emulator in a child process, so its CPU is neither the hub's nor the client's.

    ``call(name, ...)`` runs one of :data:`ALLOWED` there, or reads ``calls`` (requests served
    so far, by endpoint), ``sessions`` (sessions opened, by account) or ``paths`` (its archive
    and workspace prefixes).
    """

    def __init__(self, root: Path):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve_emulator, args=(str(root), child), daemon=True)
        self.process.start()
        if not self._conn.poll(30):
            self.stop()
            raise RuntimeError("XNAT emulator process did not start within 30 s")
        self.url: str = self._conn.recv()

    def call(self, method: str, *args, **kwargs):
        self._conn.send((method, args, kwargs))
        if not self._conn.poll(30):
            raise RuntimeError(f"XNAT emulator did not answer {method} within 30 s")
        result = self._conn.recv()
        if isinstance(result, Exception):
            raise result
        return result

    def stop(self) -> None:
        if self.process.is_alive():
            try:
                self._conn.send(("stop", (), {}))
            except (BrokenPipeError, OSError):
                pass
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
