"""Start and drive the real OpenID provider (npm ``oidc-provider``) on 127.0.0.1.

The node side is ``tests/world/oidc/provider.mjs``. It re-reads ``clients.json`` and
``accounts.json`` in its state dir on every lookup, so clients and accounts can be
added while it runs.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import secrets
import shutil
import string
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
SCRIPT = HERE / "oidc" / "provider.mjs"
NODE_MODULES = REPO_ROOT / "node_modules"

PROFILES = ("aaf", "google", "generic")
#: ID token algorithms the provider can use; all three are what XNAT's OpenID plugin verifies
ID_TOKEN_ALGS = ("RS256", "RS384", "RS512")
AUTH_METHODS = ("client_secret_post", "client_secret_basic")
_ALNUM = string.ascii_letters + string.digits


class OidcProviderError(RuntimeError):
    """The provider could not start, or was used before it started."""


def aaf_style_sub() -> str:
    """An opaque, mixed-case, 43-character subject like AAF's."""
    for _ in range(100):
        sub = "".join(secrets.choice(_ALNUM) for _ in range(43))
        if any(c.isupper() for c in sub) and any(c.islower() for c in sub):
            return sub
    raise AssertionError("no mixed-case subject in 100 draws")  # pragma: no cover


def google_style_sub() -> str:
    """A numeric 21-digit subject like Google's."""
    return "1" + "".join(secrets.choice(string.digits) for _ in range(20))


class OidcProvider:
    """One ``oidc-provider`` process with its own state dir, issuer and key."""

    def __init__(
        self,
        state_dir: Path,
        *,
        profile: str = "aaf",
        port: int = 0,
        id_token_ttl: int = 3600,
        access_token_ttl: int = 3600,
        refresh: bool = True,
        conform_id_token_claims: bool = True,
        id_token_alg: str = "RS256",
        start_timeout: float = 30.0,
    ):
        """``id_token_alg``: how ID tokens are signed (one RSA key, published with that ``alg``).
        Access tokens are opaque whatever it is, as Google's and AAF's are to XNAT."""
        if profile not in PROFILES:
            raise ValueError(f"profile must be one of {PROFILES}")
        if id_token_alg not in ID_TOKEN_ALGS:
            raise ValueError(f"id_token_alg must be one of {ID_TOKEN_ALGS}")
        self.id_token_alg = id_token_alg
        self.state_dir = Path(state_dir)
        self.profile = profile
        self.refresh = refresh
        self._config = {
            "port": port,
            "profile": profile,
            "id_token_ttl": id_token_ttl,
            "access_token_ttl": access_token_ttl,
            "refresh": refresh,
            "conform_id_token_claims": conform_id_token_claims,
            "id_token_alg": id_token_alg,
        }
        self._start_timeout = start_timeout
        self._proc: subprocess.Popen | None = None
        self._log = None
        self._issuer: str | None = None
        self.port: int | None = None
        # add_client/add_account rewrite whole files; serialise writers in this process.
        self._lock = threading.Lock()

    # -- lifecycle ---------------------------------------------------------------

    def start(self, *, retry: bool = True) -> "OidcProvider":
        """Spawn node and wait (bounded) for its READY line; raise with its stderr on failure."""
        if self._proc is not None:
            raise OidcProviderError("already started")
        node = shutil.which("node")
        if node is None:
            raise OidcProviderError("node is not on PATH")
        if not (NODE_MODULES / "oidc-provider").is_dir():
            raise OidcProviderError("oidc-provider is not installed: run `npm ci` in the repo root")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._write_json("config.json", self._config)
        for name in ("clients.json", "accounts.json"):
            if not (self.state_dir / name).exists():
                self._write_json(name, {})

        self._log = open(self.state_dir / "provider.log", "wb")
        self._proc = subprocess.Popen(
            [node, str(SCRIPT), str(self.state_dir)],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, "NO_COLOR": "1"},
        )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump_lines, args=(self._proc.stdout, lines), daemon=True).start()
        try:
            line = lines.get(timeout=self._start_timeout)
        except queue.Empty:
            line = ""
        if not line or not line.startswith("READY "):
            stuck = _process_state(self._proc.pid) if line == "" else ""
            code = self.stop()
            if line is None:
                why = f"exited with {code}"
            elif not line:
                why = f"no READY line within {self._start_timeout}s; node was {stuck}"
            else:
                why = f"said {line!r}"
            if line == "" and retry:
                # CI saw node, silent and alive, miss its READY line twice in a run where
                # every other of hundreds of starts took 0.3 s; one more try, said in the log.
                log.warning("oidc-provider did not start (%s); starting it once more", why)
                return self.start(retry=False)
            raise OidcProviderError(f"provider did not start ({why}):\n{self.log_text()}")
        ready = json.loads(line[len("READY ") :])
        self._issuer, self.port = ready["issuer"], ready["port"]
        return self

    def stop(self) -> int | None:
        """Terminate node and wait for it, bounded; safe to call twice.

        Returns node's exit code (0 after a clean SIGTERM), or None if it was not running.
        """
        proc, self._proc = self._proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
            try:
                code = proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait(timeout=5)
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def __enter__(self) -> "OidcProvider":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """The provider's stderr so far (it never logs tokens or secrets)."""
        path = self.state_dir / "provider.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # -- addresses ---------------------------------------------------------------

    @property
    def issuer(self) -> str:
        if self._issuer is None:
            raise OidcProviderError("provider not started")
        return self._issuer

    @property
    def url(self) -> str:
        """Base URL; equal to the issuer (no path)."""
        return self.issuer

    @property
    def discovery_url(self) -> str:
        return self.issuer + "/.well-known/openid-configuration"

    def signing_jwk(self) -> dict:
        """The provider's private RSA JWK (``alg`` = ``id_token_alg``), for tests that need a
        validly signed token with claims of their choosing (:meth:`sign`)."""
        return json.loads((self.state_dir / "signing_jwk.json").read_text())

    def sign(self, claims: dict, *, header: dict | None = None) -> str:
        """A JWT signed with the provider's own key (valid at its JWKS), with exactly ``claims``:
        e.g. a Bearer token for XNAT with a chosen ``sub``, ``email`` or ``exp``. The header gets
        ``alg`` and ``kid``; ``header`` adds or overrides fields (``typ``...)."""
        from joserfc import jwt
        from joserfc.jwk import RSAKey

        jwk = self.signing_jwk()
        key = RSAKey.import_key({k: v for k, v in jwk.items() if k not in ("alg", "use")})
        head = {"alg": jwk["alg"], "kid": jwk["kid"], **(header or {})}
        return jwt.encode(head, claims, key, algorithms=[head["alg"]])

    # -- clients and accounts ----------------------------------------------------

    def add_client(
        self,
        client_id: str,
        client_secret: str,
        redirect_uris: Iterable[str],
        *,
        auth_method: str = "client_secret_post",
        post_logout_redirect_uris: Iterable[str] = (),
    ) -> None:
        """Register (or replace) a confidential client; takes effect on its next request."""
        if auth_method not in AUTH_METHODS:
            raise ValueError(f"auth_method must be one of {AUTH_METHODS}")
        grant_types = ["authorization_code"] + (["refresh_token"] if self.refresh else [])
        client = {
            "client_secret": client_secret,
            "redirect_uris": list(redirect_uris),
            "post_logout_redirect_uris": list(post_logout_redirect_uris),
            "token_endpoint_auth_method": auth_method,
            "grant_types": grant_types,
            "response_types": ["code"],
        }
        self._update("clients.json", client_id, client)

    def add_account(self, account_id: str, claims: dict) -> dict:
        """Add (or replace) the account whose login name is ``account_id``.

        ``claims["sub"]`` defaults to ``account_id``. Returns the stored claims.
        """
        claims = {"sub": account_id, **claims}
        self._update("accounts.json", account_id, claims)
        return claims

    def aaf_account(
        self,
        account_id: str,
        *,
        sub: str | None = None,
        affiliation: Iterable[str] = ("member@example.edu.au",),
        home_org: str = "example.edu.au",
        entitlement: Iterable[str] = (),
        email: str | None = None,
        orcid: str | None = None,
        extra: dict | None = None,
    ) -> dict:
        """Add an AAF-like account: opaque mixed-case sub, ``edu_person_*`` claims."""
        affiliation = list(affiliation)
        given = account_id.capitalize()
        claims = {
            "sub": sub or aaf_style_sub(),
            "name": f"{given} Tester",
            "given_name": given,
            "family_name": "Tester",
            "preferred_username": account_id,
            "email": email or f"{account_id}@{home_org}",
            "edu_person_principal_name": f"{account_id}@{home_org}",
            "edu_person_scoped_affiliation": affiliation,
            "edu_person_affiliation": sorted({a.split("@", 1)[0] for a in affiliation}),
            "edu_person_entitlement": list(entitlement),
            "schac_home_organization": home_org,
            "au_edu_person_shared_token": "".join(secrets.choice(_ALNUM) for _ in range(27)),
        }
        if orcid is not None:
            claims["edu_person_orcid"] = orcid
        claims.update(extra or {})
        return self.add_account(account_id, claims)

    def google_account(
        self,
        account_id: str,
        *,
        sub: str | None = None,
        email: str | None = None,
        email_verified: bool = True,
        hd: str | None = None,
        extra: dict | None = None,
    ) -> dict:
        """Add a Google-like account: numeric sub; ``hd`` only for Workspace accounts."""
        given = account_id.capitalize()
        claims = {
            "sub": sub or google_style_sub(),
            "email": email or f"{account_id}@{hd or 'gmail.com'}",
            "email_verified": email_verified,
            "name": f"{given} Tester",
            "given_name": given,
            "family_name": "Tester",
            "locale": "en",
        }
        if self._issuer is not None:
            # Points back at the provider itself, so nothing ever leaves loopback.
            claims["picture"] = f"{self._issuer}/picture/{claims['sub']}.png"
        if hd is not None:
            claims["hd"] = hd
        claims.update(extra or {})
        return self.add_account(account_id, claims)

    # -- files -------------------------------------------------------------------

    def _update(self, name: str, key: str, value: dict) -> None:
        with self._lock:
            path = self.state_dir / name
            data = json.loads(path.read_text()) if path.exists() else {}
            data[key] = value
            self._write_json(name, data)

    def _write_json(self, name: str, data: dict) -> None:
        # Atomic replace: node re-reads these files at any moment and must never see half.
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.state_dir, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, self.state_dir / name)
        except BaseException:
            os.unlink(tmp)
            raise


def _process_state(pid: int) -> str:
    """What a live process is doing, from /proc (state and the kernel function it waits in)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        wchan = Path(f"/proc/{pid}/wchan").read_text().strip() or "-"
        return f"in state {state}, waiting in {wchan}"
    except OSError as e:
        return f"unreadable ({e})"


def _pump_lines(stream, lines: "queue.Queue[str | None]") -> None:
    """Forward stdout lines to ``lines``; None marks end of stream (the process died)."""
    with stream:
        for raw in stream:
            lines.put(raw.decode(errors="replace").rstrip("\n"))
    lines.put(None)
