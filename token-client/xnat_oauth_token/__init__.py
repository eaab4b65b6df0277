"""A valid XNAT token in a notebook server of an xnat-oauth hub, renewed through the hub.

The server's token comes from its environment (``XNAT_HOST``, ``XNAT_USER``, ``XNAT_PASS`` and,
for servers started from the hub, ``XNAT_TOKEN_EXPIRES``). Close to its expiry the hub gives a
new one (``POST {hub}/xnat-oauth/server-token``, authenticated with the server's own
``JUPYTERHUB_API_TOKEN``) and ends the old one, so every process of the server must read the
token here, not from the environment: the current token is kept in a file private to the
server's user (one per server start), under a lock, so several kernels renew once, together.

When the hub will not renew (the user logged out of the hub, the hub's maximum is reached,
renewal is not set up) the current token is used while it lasts, with a :class:`RenewalWarning`
saying why; once it has expired, :class:`TokenError` says why. Only the standard library.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import ssl
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, Optional

#: released with xnat-oauth, the same version (scripts/check_release_version.py checks it)
__version__ = "0.1.0"
__all__ = ["Token", "TokenError", "RenewalWarning", "get_token", "main"]

#: the hub's endpoint, below its prefix (``/hub``)
ENDPOINT = "/xnat-oauth/server-token"
#: how long a refused renewal is not asked again (the hub may say otherwise)
RETRY_AFTER = 60.0
#: an unreachable hub is asked again this soon
RETRY_UNREACHABLE = 10.0
TIMEOUT = 30.0


class TokenError(Exception):
    """No valid XNAT token: ``str()`` says why and what to do."""


class RenewalWarning(UserWarning):
    """The hub did not renew the token; the current one still works until it expires."""


@dataclass(frozen=True)
class Token:
    host: str
    user: str
    password: str = field(repr=False)
    expires_at: Optional[float] = None  # epoch seconds; None: unknown (XNAT's launch token)

    def env(self) -> Dict[str, str]:
        env = {"XNAT_HOST": self.host, "XNAT_USER": self.user, "XNAT_PASS": self.password}
        if self.expires_at is not None:
            env["XNAT_TOKEN_EXPIRES"] = str(int(self.expires_at))
        return env

    def xnatpy(self) -> Dict[str, str]:
        """Keyword arguments for ``xnat.connect(**token.xnatpy())``."""
        return {"server": self.host, "user": self.user, "password": self.password}


class _Refused(Exception):
    def __init__(self, status: int, reason: str, message: str, retry_after: Optional[float] = None):
        super().__init__(message)
        self.status, self.reason, self.message, self.retry_after = status, reason, message, retry_after


class _Server:
    """This server as its environment describes it."""

    def __init__(self, environ=os.environ):
        self.api_token = environ.get("JUPYTERHUB_API_TOKEN", "")
        api_url = environ.get("JUPYTERHUB_API_URL", "").rstrip("/")
        if not self.api_token or not api_url:
            raise TokenError("not in a JupyterHub server: JUPYTERHUB_API_TOKEN and JUPYTERHUB_API_URL are not set")
        self.url = (api_url[: -len("/api")] if api_url.endswith("/api") else api_url) + ENDPOINT
        self.host = environ.get("XNAT_HOST", "")
        self.seed = _seed(environ)
        self.ssl = _ssl_context(environ)
        digest = hashlib.sha256(self.api_token.encode("utf-8")).hexdigest()[:24]
        self.directory = environ.get("XNAT_TOKEN_DIR") or os.path.join(
            tempfile.gettempdir(), f"xnat-oauth-token-{os.getuid() if hasattr(os, 'getuid') else 0}")
        self.state_path = os.path.join(self.directory, f"server-{digest}.json")

    def call(self, method: str) -> Dict[str, Any]:
        """The hub's answer, or _Refused (with the hub's message when it gave one)."""
        request = urllib.request.Request(
            self.url,
            data=b"{}" if method == "POST" else None,
            method=method,
            headers={"Authorization": f"token {self.api_token}", "Content-Type": "application/json",
                     "Accept": "application/json"},
        )
        # never through a proxy: the request carries the server's hub token
        handlers: list = [urllib.request.ProxyHandler({})]
        if self.ssl is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.ssl))
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(request, timeout=TIMEOUT) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            try:
                body = json.loads(e.read().decode("utf-8"))
            except ValueError:
                body = {}
            message = body.get("message") or f"the hub answered {e.code}"
            retry = body.get("retry_after")
            raise _Refused(e.code, str(body.get("reason") or "error"), str(message),
                           float(retry) if isinstance(retry, (int, float)) else None) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise _Refused(0, "unreachable", f"the hub could not be reached to renew the XNAT token ({e})",
                           RETRY_UNREACHABLE) from None


def _seed(environ) -> Optional[Dict[str, Any]]:
    user, password = environ.get("XNAT_USER"), environ.get("XNAT_PASS")
    if not user or not password:
        return None
    try:
        expires: Optional[float] = float(environ["XNAT_TOKEN_EXPIRES"])
    except (KeyError, ValueError):
        expires = None
    return {"user": user, "password": password, "expires_at": expires, "renew_at": None}


def _ssl_context(environ) -> Optional[ssl.SSLContext]:
    """JupyterHub's internal TLS (``internal_ssl``): the hub's CA and the server's own pair."""
    ca = environ.get("JUPYTERHUB_SSL_CLIENT_CA")
    if not ca:
        return None
    context = ssl.create_default_context(cafile=ca)
    cert, key = environ.get("JUPYTERHUB_SSL_CERTFILE"), environ.get("JUPYTERHUB_SSL_KEYFILE")
    if cert and key:
        context.load_cert_chain(cert, key)
    return context


def _private_dir(path: str) -> None:
    """A directory of ours that no one else can enter: refused if someone planted the name."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
        raise TokenError(f"{path} is not a directory of this user; set XNAT_TOKEN_DIR to one")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)


@contextlib.contextmanager
def _locked(server: _Server) -> Iterator[None]:
    """One process of this server at a time reads, renews and writes the token."""
    _private_dir(server.directory)
    fd = os.open(server.state_path + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            import fcntl
        except ImportError:  # not POSIX: no other process to share with in practice
            fcntl = None  # type: ignore[assignment]
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _load(server: _Server) -> Optional[Dict[str, Any]]:
    try:
        with open(server.state_path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) else None


def _save(server: _Server, state: Dict[str, Any]) -> None:
    tmp = f"{server.state_path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(state, f)
    os.replace(tmp, server.state_path)


def _from_hub(answer: Dict[str, Any]) -> Dict[str, Any]:
    return {k: answer.get(k) for k in ("user", "password", "expires_at", "renew_at", "renewal_ends_at")}


def _first(server: _Server) -> Dict[str, Any]:
    """This server's token at the first use: what the hub holds (another process may have
    renewed it already), else the environment's."""
    try:
        return _from_hub(server.call("GET"))
    except _Refused as r:
        state = dict(server.seed or {})
        if r.reason not in ("no_token", "unreachable"):
            state["refused"] = {"message": r.message, "until": time.time() + (r.retry_after or RETRY_AFTER)}
        return state


def _due(state: Dict[str, Any], now: float, min_valid: float) -> bool:
    expires, renew_at = state.get("expires_at"), state.get("renew_at")
    if not state.get("password") or expires is None:
        return True  # no token, or XNAT's launch token of unknown expiry
    if renew_at is not None and now >= renew_at:
        return True
    return expires - now <= max(min_valid, 0.0)


def get_token(min_valid: float = 0.0, *, renew: bool = False) -> Token:
    """A valid XNAT token of this server, renewed through the hub when it is due, or valid for
    less than ``min_valid`` seconds (``renew=True``: now). :class:`TokenError` when none is valid."""
    server = _Server()
    warning = None
    with _locked(server):
        state = _load(server) or _first(server)
        now = time.time()
        if renew or _due(state, now, min_valid):
            refused = state.get("refused") or {}
            if renew or now >= float(refused.get("until", 0)):
                try:
                    state = _from_hub(server.call("POST"))
                except _Refused as r:
                    if r.reason != "too_soon":
                        refused = {"message": r.message, "until": now + (r.retry_after or RETRY_AFTER)}
                        state["refused"] = refused
            warning = refused.get("message") if state.get("refused") else None
        _save(server, state)
    if not state.get("password"):
        raise TokenError(warning or "this server holds no XNAT token")
    expires = state.get("expires_at")
    if expires is not None and expires <= time.time():
        raise TokenError(f"the XNAT token has expired. {warning or 'Restart the server for a new one.'}")
    if warning:
        warnings.warn(warning, RenewalWarning, stacklevel=2)
    return Token(host=server.host, user=state["user"], password=state["password"], expires_at=expires)


def main(argv=None) -> int:
    """``xnat-token``: print a valid token (shell-quoted ``NAME=value`` lines, or ``--json``)."""
    parser = argparse.ArgumentParser(prog="xnat-token", description=main.__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON instead of NAME=value lines")
    parser.add_argument("--min-valid", type=float, default=0.0, metavar="SECONDS",
                        help="renew unless the token is valid for this long")
    parser.add_argument("--renew", action="store_true", help="renew now")
    args = parser.parse_args(argv)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RenewalWarning)
        try:
            token = get_token(args.min_valid, renew=args.renew)
        except TokenError as e:
            print(f"xnat-token: {e}", file=sys.stderr)
            return 1
    for w in caught:
        print(f"xnat-token: warning: {w.message}", file=sys.stderr)
    env = token.env()
    if args.json:
        print(json.dumps(env))
    else:
        for name, value in env.items():
            print(f"{name}={shlex.quote(value)}")
    return 0
