"""A real JupyterHub, with the real configurable-http-proxy, as a subprocess on 127.0.0.1.

The hub runs in its own process group with a clean environment; its stdout and stderr
(the hub's DEBUG log and the proxy's log) go to ``workdir/hub.log`` so tests can grep them
for leaked secrets. Linux only: the proxy is watched through a pidfd.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

import httpx

from tests.world.browser import SHARED_SSL_CONTEXT

REPO_ROOT = Path(__file__).resolve().parents[2]
CHP_COMMAND = REPO_ROOT / "node_modules" / ".bin" / "configurable-http-proxy"

#: scopes of the "test-admin" service whose token ``HubProcess.api`` uses
ADMIN_SCOPES = [
    "admin:users",
    "admin:auth_state",
    "admin:servers",
    "read:users",
    "list:users",
    "users:activity",
]

#: the line JupyterHub logs once the proxy, routes and services are up
READY_LINE = "JupyterHub is now running at"

# Inherited variables the hub legitimately needs; everything else (proxies, the developer's
# tokens, a stray JUPYTERHUB_CRYPT_KEY) stays out of the hub's environment.
_INHERITED_ENV = ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "COVERAGE_PROCESS_START")

_STOP_GRACE = 15.0
_KILL_GRACE = 5.0
_POLL_INTERVAL = 0.1
_PORT_IN_USE = ("EADDRINUSE", "Address already in use")
_START_ATTEMPTS = 3


# Hubs still running when the test process exits (Ctrl-C, a crashed fixture) are stopped
# here, so no hub or proxy outlives the run.
_LIVE_HUBS: set[HubProcess] = set()

#: the log of every hub this process created, for the session's scan (see ``leaked_codes``)
HUB_LOGS: list[Path] = []

# an OAuth authorization code in a URL as a log line would show it; JupyterHub's own request
# log writes "code=[secret]"
_CODE_IN_URL = re.compile(r"[?&]code=(?!\[secret\])[^&\s\"'<>)]+")


def leaked_codes(log: str, codes: Iterable[str] = ()) -> list[str]:
    """Authorization codes ``log`` shows: any ``code=`` query parameter, and any of ``codes``
    (the codes a provider issued) anywhere. Each is cut to a few characters, fit to print."""
    found = {m.group(0) for m in _CODE_IN_URL.finditer(log)}
    found |= {code for code in codes if code and code in log}
    return sorted(f"{c[:10]}..." for c in found)


@atexit.register
def _stop_leftover_hubs() -> None:
    for hub in list(_LIVE_HUBS):
        hub.stop()


class HubStartError(RuntimeError):
    """The hub exited, or never became ready, during ``start()``."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(f"{message}\n--- hub.log (tail) ---\n{log_tail}")
        self.log_tail = log_tail


_REAL_TRACEBACK = re.compile(r"Traceback \(most recent call last\):\n\s+File ")


def has_traceback(log: str) -> bool:
    """Whether ``log`` holds a real traceback (with frames). JupyterHub 5 logs an expected
    refusal with ``log.exception`` outside any ``except``, which writes a frameless
    ``Traceback (most recent call last): NoneType: None``: that is not a crash."""
    return bool(_REAL_TRACEBACK.search(log))


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago (the kernel picks it, so parallel runs don't clash)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_listening(port: int) -> bool:
    """True if something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def process_alive(pid: int) -> bool:
    """True if ``pid`` is a live (not zombie) process; an orphan's zombie may wait for its reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    # the state follows the parenthesised command name, which may itself hold spaces or ')'
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def _wait_pidfd(pidfd: int, timeout: float) -> bool:
    """Wait for the process behind ``pidfd`` to exit; True if it did within ``timeout``."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))


class HubProcess:
    """One JupyterHub subprocess with its proxy, its sqlite db and its log in ``workdir``.

    ``config`` is Python appended to a generated base config (see ``base_config``), so it may
    override anything there. ``crypt_key``: ``...`` generates a random 32-byte hex key
    (kept across ``restart()``), ``None`` leaves ``JUPYTERHUB_CRYPT_KEY`` unset, a string is used as is.
    """

    def __init__(
        self,
        workdir: Path,
        config: str,
        *,
        env: dict[str, str] | None = None,
        port: int | None = None,
        crypt_key: Any = ...,
    ):
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.extra_env = dict(env or {})
        self.crypt_key: str | None = secrets.token_hex(32) if crypt_key is ... else crypt_key
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.hub_url = self.url + "/hub"
        self.api_token = secrets.token_hex(32)
        self.config_path = self.workdir / "jupyterhub_config.py"
        self.log_path = self.workdir / "hub.log"
        HUB_LOGS.append(self.log_path)
        self.proxy_pid_path = self.workdir / "jupyterhub-proxy.pid"
        self.hub_port = 0
        self.proxy_api_port = 0
        self.proxy_pid: int | None = None
        self._proxy_pidfd: int | None = None
        self._proc: subprocess.Popen | None = None
        self._log_offset = 0

    # -- configuration -------------------------------------------------------------------

    def base_config(self) -> str:
        """The generated part of ``jupyterhub_config.py``; the caller's ``config`` follows it."""
        w = self.workdir
        return f"""\
# Generated by tests/world/hub.py; the test's own config follows the marker below.
c = get_config()  # noqa
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {self.port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {self.hub_port}
c.ConfigurableHTTPProxy.command = [{str(CHP_COMMAND)!r}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = {str(self.proxy_pid_path)!r}
c.JupyterHub.db_url = {"sqlite:///" + str(w / "jupyterhub.sqlite")!r}
c.JupyterHub.cookie_secret_file = {str(w / "jupyterhub_cookie_secret")!r}
c.JupyterHub.pid_file = {str(w / "jupyterhub.pid")!r}
c.JupyterHub.cleanup_servers = True
c.JupyterHub.cleanup_proxy = True
c.JupyterHub.log_level = "DEBUG"
c.JupyterHub.services = [{{"name": "test-admin", "api_token": {self.api_token!r}}}]
c.JupyterHub.load_roles = [
    {{"name": "test-admin", "scopes": {ADMIN_SCOPES!r}, "services": ["test-admin"]}},
]
# ---- test config ----
"""

    def _write_config(self) -> None:
        self.config_path.write_text(self.base_config() + self.config + "\n")
        # the file holds the admin token: keep it private even in a tmp dir
        self.config_path.chmod(0o600)

    def hub_env(self) -> dict[str, str]:
        """The hub's whole environment: a clean base, then ``env``, then the crypt key."""
        bin_dir = str(Path(sys.executable).parent)
        env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        env.update(
            PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", os.defpath)]),
            HOME=str(self.workdir),
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        env.pop("JUPYTERHUB_CRYPT_KEY", None)
        if self.crypt_key is not None:
            env["JUPYTERHUB_CRYPT_KEY"] = self.crypt_key
        return env

    # -- life cycle ----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the hub process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def _spawn(self) -> None:
        if self.running:
            raise RuntimeError("hub already running")
        # a hub that died on its own may have left its proxy behind
        self.stop()
        # hub and proxy API ports may be re-picked; the public port stays (an IdP knows it)
        self.hub_port = free_port()
        self.proxy_api_port = free_port()
        self._write_config()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub", "-f", str(self.config_path)],
                cwd=self.workdir,
                env=self.hub_env(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _LIVE_HUBS.add(self)

    def run_log(self) -> str:
        """The log of the current (or last) run only."""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            return f.read().decode("utf-8", "replace")

    def _tail(self, lines: int = 60) -> str:
        return "\n".join(self.run_log().splitlines()[-lines:])

    def _wait_ready(self, deadline: float) -> None:
        with httpx.Client(trust_env=False, verify=SHARED_SSL_CONTEXT, timeout=5.0) as client:
            while time.monotonic() < deadline:
                if READY_LINE in self.run_log():
                    try:
                        if client.get(self.hub_url + "/api/").status_code == 200:
                            return
                    except httpx.TransportError:
                        pass
                try:
                    # doubles as the pause between polls and the early-exit check
                    self._proc.wait(timeout=_POLL_INTERVAL)
                except subprocess.TimeoutExpired:
                    continue
                raise HubStartError(
                    f"hub exited with code {self._proc.returncode} during start-up", self._tail()
                )
        self.stop()
        raise HubStartError("hub not ready before the deadline", self._tail())

    def start(self, timeout: float = 60) -> HubProcess:
        """Start the hub and return once it answers ``/hub/api/`` through the proxy.

        Raises HubStartError (with the log tail) if it exits early or is not up in ``timeout``.
        """
        deadline = time.monotonic() + timeout
        for attempt in range(_START_ATTEMPTS):
            self._spawn()
            try:
                self._wait_ready(deadline)
            except HubStartError as err:
                self.stop()
                # another run grabbed a port between free_port() and bind(): pick again
                if attempt + 1 < _START_ATTEMPTS and any(s in err.log_tail for s in _PORT_IN_USE):
                    continue
                raise
            self._adopt_proxy()
            return self
        raise AssertionError("unreachable")

    def start_expecting_failure(self, timeout: float = 60) -> tuple[int, str]:
        """Start a hub that must refuse to start; return (exit code, log of this run).

        Fails the test (AssertionError) if the hub becomes ready or is still running at ``timeout``.
        """
        self._spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                code = self._proc.wait(timeout=_POLL_INTERVAL)
            except subprocess.TimeoutExpired:
                if READY_LINE in self.run_log():
                    break
                continue
            self.stop()
            return code, self.run_log()
        self.stop()
        raise AssertionError("hub started although it was expected to refuse:\n" + self._tail())

    def _adopt_proxy(self) -> None:
        """Hold a pidfd on the proxy JupyterHub started (in its own session, so not in our group)."""
        if self._proxy_pidfd is not None or not self.proxy_pid_path.exists():
            return
        try:
            pid = int(self.proxy_pid_path.read_text().strip())
            pidfd = os.pidfd_open(pid)
        except (ValueError, ProcessLookupError, FileNotFoundError):
            return
        # a stale pid file could name an unrelated process: only adopt our own proxy
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            cmdline = b""
        if b"configurable-http-proxy" not in cmdline or str(self.proxy_api_port).encode() not in cmdline:
            os.close(pidfd)
            return
        self.proxy_pid, self._proxy_pidfd = pid, pidfd

    def _reap_proxy(self) -> None:
        """Make sure the proxy is gone: the hub terminates it on a clean exit, not on a crash."""
        self._adopt_proxy()
        if self._proxy_pidfd is None:
            return
        pidfd, self._proxy_pidfd = self._proxy_pidfd, None
        try:
            for sig, grace in ((signal.SIGTERM, _STOP_GRACE), (signal.SIGKILL, _KILL_GRACE)):
                if _wait_pidfd(pidfd, 0):
                    return
                signal.pidfd_send_signal(pidfd, sig)
                if _wait_pidfd(pidfd, grace):
                    return
            raise RuntimeError(f"proxy pid {self.proxy_pid} survived SIGKILL")
        except ProcessLookupError:
            return
        finally:
            os.close(pidfd)

    def stop(self) -> None:
        """SIGTERM the hub (it stops servers and the proxy), escalate to SIGKILL of its group, reap the proxy."""
        _LIVE_HUBS.discard(self)
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                self._adopt_proxy()
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=_STOP_GRACE)
                except subprocess.TimeoutExpired:
                    pass
            # whatever is left in the hub's group (a hung hub, a helper it started); the group
            # id cannot be reused while the leader is our unreaped child or members remain
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait(timeout=_KILL_GRACE)
        self._reap_proxy()

    def restart(self, timeout: float = 60) -> HubProcess:
        """Stop and start again with the same workdir, db, cookie secret, crypt key and public URL."""
        self.stop()
        return self.start(timeout=timeout)

    # -- talking to it -------------------------------------------------------------------

    def _api_url(self, path: str) -> str:
        return f"{self.hub_url}/api/{path.lstrip('/')}"

    def _api_headers(self, kw: dict) -> dict:
        return {"Authorization": f"token {self.api_token}", **kw.pop("headers", {})}

    async def api(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """Call the hub's REST API (``path`` relative to ``/hub/api``) with the admin service token."""
        headers = self._api_headers(kw)
        async with httpx.AsyncClient(
            trust_env=False, verify=SHARED_SSL_CONTEXT, timeout=kw.pop("timeout", 30.0)
        ) as client:
            return await client.request(method, self._api_url(path), headers=headers, **kw)

    def api_sync(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """Blocking ``api()`` for synchronous (e.g. module-scoped) fixtures."""
        headers = self._api_headers(kw)
        with httpx.Client(
            trust_env=False, verify=SHARED_SSL_CONTEXT, timeout=kw.pop("timeout", 30.0)
        ) as client:
            return client.request(method, self._api_url(path), headers=headers, **kw)

    async def user_model(self, name: str) -> dict | None:
        """The admin view of a user (with ``auth_state`` and stopped servers), or None if unknown."""
        resp = await self.api(
            "GET", f"/users/{quote(name, safe='')}", params={"include_stopped_servers": "1"}
        )
        if resp.status_code == 404:
            return None
        resp.raise_for_status()
        return resp.json()

    def log_text(self) -> str:
        """The whole hub.log, across restarts."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text("utf-8", "replace")
