"""A small OpenID provider the TEST controls, for tokens a certified provider will not produce.

It is a real HTTP server (tornado, 127.0.0.1 only, its own event loop in a daemon thread) with
discovery, JWKS, authorize, token and userinfo endpoints. It behaves like a provider should
(client secret, registered redirect URIs, PKCE S256, single-use codes) until the test sets
``idp.mode`` to one of :class:`TokenMode`, or ``idp.id_token_hook`` to build the ID token itself.

Counters (``idp.counts["discovery" | "jwks" | "authorize" | "token" | "userinfo"]``) let tests and
benchmarks assert, e.g., "no discovery or JWKS fetch per login after the first"; ``idp.requests``
keeps the parameters the relying party sent to authorize and token (PKCE's challenge and
verifier), and every authorization code it issued is kept (also in :data:`ISSUED_CODES`, for the
session's log scan).

Faults (``idp.faults[endpoint]``): an HTTP status, ``"garbage"`` (200 with an HTML page) or
``"hang"`` (never answers: the request is held until the faults are reset, then the connection
is closed). With ``doors``, the named endpoints are served on ports of their own, as a provider
whose token or key endpoints live on other hosts (Google's do): the discovery document names
those ports, faults on such an endpoint apply to its door only (XNAT, fetching the keys from
the main port, is not disturbed), and a door can be shut (connection refused) and opened again,
over https with a certificate the client trusts or one it does not (``tls_doors``, see
:mod:`tests.world.tls`).

Usage::

    with RogueIdP() as idp:
        idp.mode = TokenMode.EXPIRED
        tokens = await code_flow(http, idp, nonce="n-1")
"""

from __future__ import annotations

import asyncio
import base64
import collections
import enum
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit

import httpx
import pytest
import tornado.httpserver
import tornado.netutil
import tornado.web
from authlib.oidc.core.util import create_half_hash
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, RSAKey

LOOPBACK = "127.0.0.1"
_START_TIMEOUT = 10.0
#: how long a "hang" fault holds a request at most (faults are reset long before)
_HANG_LIMIT = 60.0
#: endpoints that may have a door of their own
DOOR_ENDPOINTS = ("jwks", "token", "userinfo")

#: every authorization code any RogueIdP issued in this process, for the session's log scan
ISSUED_CODES: set[str] = set()


@dataclass
class _Listener:
    """One port of the provider: the main one, or an endpoint's door."""

    name: str
    port: int
    tls: Any = None  # the TestCA of a https door
    cert: str = "trusted"
    server: tornado.httpserver.HTTPServer | None = None


class TokenMode(str, enum.Enum):
    """What the token endpoint does to the ID token it returns."""

    OK = "ok"
    #: signed by a key that is not the provider's, header names a published kid
    FORGED_SIGNATURE = "forged_signature"
    #: signed by a key that is not published, with a kid never seen before (fresh each time)
    UNKNOWN_KID = "unknown_kid"
    #: ``alg: none``, empty signature
    ALG_NONE = "alg_none"
    #: ``alg: HS256`` with the provider's public RSA key (PEM) as the HMAC secret
    HS256_WITH_PUBLIC_KEY = "hs256_with_public_key"
    EXPIRED = "expired"
    #: iat an hour in the future
    ISSUED_IN_FUTURE = "issued_in_future"
    WRONG_AUD = "wrong_aud"
    WRONG_ISS = "wrong_iss"
    NO_NONCE = "no_nonce"
    #: the nonce of the previous authorize request instead of this one's
    REPLAYED_NONCE = "replayed_nonce"
    #: aud [client, other], azp other
    MULTI_AUD_BAD_AZP = "multi_aud_bad_azp"
    #: aud [client, other], no azp
    MULTI_AUD_NO_AZP = "multi_aud_no_azp"
    #: aud [client, other], azp client (valid)
    MULTI_AUD_OK = "multi_aud_ok"
    #: at_hash of another access token
    BAD_AT_HASH = "bad_at_hash"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def mixed_case_sub() -> str:
    """An AAF-like opaque subject: 43 characters, mixed case."""
    return ("aB" + secrets.token_urlsafe(31))[:43]


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    scope: str
    account: str
    nonce: str | None
    code_challenge: str | None
    #: nonce of the authorize request before this one (for REPLAYED_NONCE)
    previous_nonce: str | None


@dataclass
class _Session:
    account: str
    scope: str
    expires: float = field(default_factory=lambda: time.time() + 3600)


class RogueIdP:
    """An OpenID provider on 127.0.0.1 whose every misbehaviour a test can switch on."""

    def __init__(
        self,
        *,
        client_id: str = "rogue-client",
        client_secret: str | None = None,
        redirect_uris: tuple[str, ...] = (),
        signing_alg: str = "RS256",
        doors: tuple[str, ...] = (),
        tls_doors: tuple[str, ...] = (),
        ca: Any = None,
    ):
        unknown = set(doors) - set(DOOR_ENDPOINTS)
        if unknown or not set(tls_doors) <= set(doors) or (tls_doors and ca is None):
            raise ValueError(f"doors among {DOOR_ENDPOINTS}; tls_doors among them, with a ca")
        self._door_names = tuple(doors)
        self._tls_doors = tuple(tls_doors)
        self._ca = ca
        self._listeners: dict[str, _Listener] = {}
        self._hang_release: asyncio.Event | None = None
        self.client_id = client_id
        self.client_secret = client_secret or secrets.token_urlsafe(24)
        #: registered redirect URIs; empty means any http URL on 127.0.0.1 (test convenience)
        self.redirect_uris = tuple(redirect_uris)
        self._default_alg = signing_alg
        self._rsa = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, auto_kid=True)
        self._ec = ECKey.generate_key("P-256", parameters={"use": "sig", "alg": "ES256"}, auto_kid=True)
        self._published = [self._rsa, self._ec]
        #: RS384/RS512 keys, made (and published) the first time a test signs with them
        self._rsa_more: dict[str, RSAKey] = {}
        # Same types, never published: what a forger holds.
        self._rogue_rsa = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"})
        self._rogue_ec = ECKey.generate_key("P-256", parameters={"use": "sig", "alg": "ES256"})
        self._rogue_more: dict[str, RSAKey] = {}
        self._codes: dict[str, _Grant] = {}
        self._access_tokens: dict[str, _Session] = {}
        self._refresh_tokens: dict[str, _Session] = {}
        self._lock = threading.Lock()
        # notified on every request's arrival (see wait_for)
        self._arrived = threading.Condition()
        #: every token response sent (access, refresh and ID tokens), in order, for the
        #: provider's whole life (reset() keeps it: log scans look for all of them)
        self.issued: list[dict[str, Any]] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.port: int | None = None
        self.reset()

    def reset(self) -> None:
        """Back to an honest provider with one fresh default account and zero counters.

        Keys stay (a server shared by several tests keeps its identity); rotated keys stay published.
        """
        #: "RS256", "RS384", "RS512" or "ES256": how OK tokens are signed
        self.signing_alg = self._default_alg
        #: accounts by login_hint; the authorize request's login_hint picks one
        self.accounts: dict[str, dict[str, Any]] = {
            "default": {
                "sub": mixed_case_sub(),
                "name": "Rogue Tester",
                "given_name": "Rogue",
                "family_name": "Tester",
                "email": "rogue.tester@example.org",
                "email_verified": True,
            }
        }
        self.default_account = "default"
        self.mode: TokenMode = TokenMode.OK
        #: if set, builds the ID token: hook(claims, header) -> compact JWS string
        self.id_token_hook: Callable[[dict, dict], str] | None = None
        #: if set, userinfo answers with this sub instead of the account's
        self.userinfo_sub_override: str | None = None
        #: keys merged into the discovery document (e.g. {"issuer": "https://elsewhere.example"});
        #: a key given as None is left out
        self.discovery_overrides: dict[str, Any] = {}
        #: endpoint name -> HTTP status (int), "garbage" (200 with HTML) or "hang" (no answer
        #: until reset) instead of the endpoint's answer
        self.faults: dict[str, int | str] = {}
        #: put the account's profile claims in the ID token too (else only in userinfo)
        self.profile_in_id_token = True
        self.id_token_lifetime = 300
        #: issue refresh tokens (also when the scope has offline_access)
        self.issue_refresh_token = False
        #: raw JWK dicts appended to the published set (broken keys, enc keys, other types)
        self.extra_jwks_keys: list[dict[str, Any]] = []
        #: requests served, per endpoint
        self.counts: collections.Counter[str] = collections.Counter()
        #: nonces received by authorize, in order
        self.nonces: list[str | None] = []
        #: parameters received, per endpoint ("authorize": the query; "token": the form, without
        #: the client secret), in order
        self.requests: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
        #: authorization codes issued, in order
        self.codes_issued: list[str] = []
        self.release_hung()
        # every port listening again, with the certificate its clients trust
        for name, listener in self._listeners.items():
            if self._loop is not None and (listener.server is None or listener.cert != "trusted"):
                self.open(name)

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> "RogueIdP":
        """Listen on 127.0.0.1 (a free port, and one per door) and return once requests are served."""
        sockets = {"main": tornado.netutil.bind_sockets(0, LOOPBACK)}
        for name in self._door_names:
            sockets[name] = tornado.netutil.bind_sockets(0, LOOPBACK)
        for name, socks in sockets.items():
            self._listeners[name] = _Listener(
                name, socks[0].getsockname()[1], tls=self._ca if name in self._tls_doors else None
            )
        self.port = self._listeners["main"].port
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop

            async def setup() -> None:
                for name, socks in sockets.items():
                    self._serve(self._listeners[name], socks)

            try:
                loop.run_until_complete(setup())
            except BaseException as err:  # surfaced by start()
                failure.append(err)
                ready.set()
                return
            loop.call_soon(ready.set)
            try:
                loop.run_forever()
            finally:
                for listener in self._listeners.values():
                    if listener.server is not None:
                        listener.server.stop()
                        loop.run_until_complete(listener.server.close_all_connections())
                        listener.server = None
                loop.close()

        self._thread = threading.Thread(target=run, name=f"rogue-idp-{self.port}", daemon=True)
        self._thread.start()
        if not ready.wait(_START_TIMEOUT) or failure:
            raise RuntimeError("rogue IdP did not start") from (failure[0] if failure else None)
        return self

    def stop(self) -> None:
        """Stop serving and wait (bounded) for the thread to end."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_START_TIMEOUT)
        self._thread = None
        self._loop = None

    def __enter__(self) -> "RogueIdP":
        return self.start()

    # -- ports: the main one and the doors ------------------------------------------------------

    def _serve(self, listener: _Listener, sockets) -> None:
        ssl_options = listener.tls.server_context(listener.cert) if listener.tls is not None else None
        server = tornado.httpserver.HTTPServer(self._application(listener.name), ssl_options=ssl_options)
        server.add_sockets(sockets)
        listener.server = server

    def _on_loop(self, coro) -> None:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the rogue IdP is not started")
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(_START_TIMEOUT)

    def shut(self, name: str = "main") -> None:
        """Stop listening on ``name``'s port ("main" or a door): connection refused from now on."""
        self._on_loop(self._close(self._listeners[name]))

    @staticmethod
    async def _close(listener) -> None:
        if listener.server is not None:
            server, listener.server = listener.server, None
            server.stop()
            await server.close_all_connections()

    def open(self, name: str = "main", *, cert: str = "trusted") -> None:
        """Listen on ``name``'s port again; a https door with ``cert`` "trusted" or "untrusted"."""
        listener = self._listeners[name]

        async def up() -> None:
            await self._close(listener)
            listener.cert = cert
            self._serve(listener, tornado.netutil.bind_sockets(listener.port, LOOPBACK))

        self._on_loop(up())

    def door_url(self, name: str) -> str:
        """The base URL the discovery document gives endpoint ``name`` (its door, or the main port)."""
        listener = self._listeners.get(name) if name in self._door_names else None
        if listener is None:
            return self.issuer
        scheme = "https" if listener.tls is not None else "http"
        return f"{scheme}://{LOOPBACK}:{listener.port}"

    def fault_applies(self, endpoint: str, door: str) -> bool:
        """Faults of an endpoint with a door hit that door only; others hit the main port."""
        return door == (endpoint if endpoint in self._door_names else "main")

    def release_hung(self) -> None:
        """End every request a "hang" fault holds (the connection is closed without an answer)."""
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(self._release_on_loop)

    def _release_on_loop(self) -> None:
        if self._hang_release is not None:
            self._hang_release.set()
            self._hang_release = None

    async def hang(self) -> None:
        """Wait (on the provider's loop) until hung requests are released, bounded."""
        if self._hang_release is None:
            self._hang_release = asyncio.Event()
        try:
            await asyncio.wait_for(self._hang_release.wait(), _HANG_LIMIT)
        except asyncio.TimeoutError:
            pass

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- what tests read and steer ------------------------------------------------------------

    @property
    def issuer(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.issuer}{path}"

    @property
    def discovery_url(self) -> str:
        return self.url("/.well-known/openid-configuration")

    @property
    def account(self) -> dict[str, Any]:
        """The default account's claims (mutable)."""
        return self.accounts[self.default_account]

    def reset_counts(self) -> None:
        self.counts.clear()

    def wait_for(self, endpoint: str, count: int, timeout: float = 30.0) -> bool:
        """Block until ``endpoint`` has received ``count`` requests in all (``counts``), at most
        ``timeout`` seconds; whether it did. Runs in the caller's thread, never on the provider's."""
        with self._arrived:
            return self._arrived.wait_for(lambda: self.counts[endpoint] >= count, timeout)

    def published_kids(self) -> list[str]:
        return [k.kid for k in self._published]

    def signing_key(self, alg: str = "RS256") -> RSAKey | ECKey:
        """The published private key currently used for ``alg`` (for hooks that sign themselves).

        ``RS384``/``RS512`` keys are made and published (with that ``alg``) on first use."""
        if alg == "RS256":
            return self._rsa
        if alg in ("RS384", "RS512"):
            if alg not in self._rsa_more:
                key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": alg}, auto_kid=True)
                self._rsa_more[alg] = key
                self._published = [*self._published, key]
            return self._rsa_more[alg]
        if alg == "ES256":
            return self._ec
        raise ValueError(f"no signing key for {alg!r}")

    def _forger_key(self, alg: str) -> RSAKey | ECKey:
        if alg == "RS256":
            return self._rogue_rsa
        if alg in ("RS384", "RS512"):
            if alg not in self._rogue_more:
                self._rogue_more[alg] = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": alg})
            return self._rogue_more[alg]
        return self._rogue_ec

    def rotate_key(self, alg: str = "RS256") -> str:
        """Publish a new signing key for ``alg`` and sign with it from now on; returns its kid."""
        if alg == "RS256":
            key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, auto_kid=True)
            self._rsa = key
        elif alg in ("RS384", "RS512"):
            key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": alg}, auto_kid=True)
            self._rsa_more[alg] = key
        else:
            key = ECKey.generate_key("P-256", parameters={"use": "sig", "alg": "ES256"}, auto_kid=True)
            self._ec = key
        self._published = [*self._published, key]
        return key.kid

    def jwks(self) -> dict[str, Any]:
        """The published key set (public parts only)."""
        doc = KeySet(list(self._published)).as_dict(private=False)
        doc["keys"].extend(self.extra_jwks_keys)
        return doc

    def discovery_document(self) -> dict[str, Any]:
        doc = {
            "issuer": self.issuer,
            "authorization_endpoint": self.url("/authorize"),
            "token_endpoint": self.door_url("token") + "/token",
            "userinfo_endpoint": self.door_url("userinfo") + "/userinfo",
            "jwks_uri": self.door_url("jwks") + "/jwks",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256", *sorted(self._rsa_more)],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "name", "email"],
        }
        doc.update(self.discovery_overrides)
        return {k: v for k, v in doc.items() if v is not None}

    # -- tokens -------------------------------------------------------------------------------

    def id_token_claims(
        self,
        account: str | None = None,
        *,
        nonce: str | None = None,
        access_token: str | None = None,
        alg: str | None = None,
    ) -> dict[str, Any]:
        """The claims an honest provider would sign for ``account``."""
        profile = self.accounts[account or self.default_account]
        now = int(time.time())
        claims: dict[str, Any] = {}
        if self.profile_in_id_token:
            claims.update(profile)
        claims.update(
            {
                "iss": self.issuer,
                "sub": profile["sub"],
                "aud": self.client_id,
                "iat": now,
                "exp": now + self.id_token_lifetime,
                "auth_time": now,
            }
        )
        if nonce is not None:
            claims["nonce"] = nonce
        if access_token is not None:
            claims["at_hash"] = create_half_hash(access_token, alg or self.signing_alg).decode("ascii")
        return claims

    def make_id_token(
        self,
        claims: dict[str, Any],
        *,
        mode: TokenMode | str | None = None,
        alg: str | None = None,
        previous_nonce: str | None = None,
    ) -> str:
        """Sign ``claims`` (a copy) after applying ``mode`` (default: ``self.mode``)."""
        mode = TokenMode(mode or self.mode)
        alg = alg or self.signing_alg
        claims = dict(claims)
        now = int(time.time())
        if mode is TokenMode.EXPIRED:
            claims["iat"], claims["exp"] = now - 7200, now - 3600
        elif mode is TokenMode.ISSUED_IN_FUTURE:
            claims["iat"], claims["exp"] = now + 3600, now + 7200
        elif mode is TokenMode.WRONG_AUD:
            claims["aud"] = "another-client"
        elif mode is TokenMode.WRONG_ISS:
            claims["iss"] = "https://issuer.invalid"
        elif mode is TokenMode.NO_NONCE:
            claims.pop("nonce", None)
        elif mode is TokenMode.REPLAYED_NONCE:
            claims["nonce"] = previous_nonce or "nonce-of-an-earlier-login"
        elif mode is TokenMode.MULTI_AUD_BAD_AZP:
            claims["aud"], claims["azp"] = [self.client_id, "another-client"], "another-client"
        elif mode is TokenMode.MULTI_AUD_NO_AZP:
            claims["aud"] = [self.client_id, "another-client"]
            claims.pop("azp", None)
        elif mode is TokenMode.MULTI_AUD_OK:
            claims["aud"], claims["azp"] = [self.client_id, "another-client"], self.client_id
        elif mode is TokenMode.BAD_AT_HASH:
            claims["at_hash"] = create_half_hash("another-access-token", alg).decode("ascii")

        published = self.signing_key(alg)
        header: dict[str, Any] = {"alg": alg, "kid": published.kid, "typ": "JWT"}
        if self.id_token_hook is not None:
            return self.id_token_hook(claims, header)
        if mode is TokenMode.ALG_NONE:
            return self._unsigned({**header, "alg": "none"}, claims, b"")
        if mode is TokenMode.HS256_WITH_PUBLIC_KEY:
            # The classic algorithm-confusion attack: a verifier that takes alg from the header and
            # uses "the key" as an HMAC secret accepts this.
            secret = self._rsa.public_key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            head = {**header, "alg": "HS256", "kid": self._rsa.kid}
            signing_input = self._signing_input(head, claims)
            return self._unsigned(head, claims, hmac.new(secret, signing_input, hashlib.sha256).digest())
        rogue = self._forger_key(alg)
        algs = [alg]  # joserfc signs only "recommended" algorithms unless told (RS384/RS512 are not)
        if mode is TokenMode.FORGED_SIGNATURE:
            return jwt.encode(header, claims, rogue, algorithms=algs)
        if mode is TokenMode.UNKNOWN_KID:
            return jwt.encode({**header, "kid": "unpublished-" + secrets.token_hex(8)}, claims, rogue, algorithms=algs)
        return jwt.encode(header, claims, published, algorithms=algs)

    def add_account(self, login: str, **claims: Any) -> dict[str, Any]:
        """Add (or replace) an account with claims of the test's choosing; returns its claims.

        Unnamed claims are the default account's profile with a fresh ``sub``; a claim given as
        None is left out (an account without ``email``). Log in as it by setting
        ``idp.default_account = login`` (the hub sends no login_hint), or sign a token for it
        directly with :meth:`bearer_token`. Two subjects that render to one XNAT name:
        ``add_account("a", sub="alice@x")`` and ``add_account("b", sub="alice_x")``.
        """
        base = {k: v for k, v in self.accounts["default"].items() if k != "sub"} if "default" in self.accounts else {}
        merged = {"sub": mixed_case_sub(), **base, **claims}
        self.accounts[login] = {k: v for k, v in merged.items() if v is not None}
        return dict(self.accounts[login])

    def bearer_token(self, account: str | None = None, *, alg: str | None = None, **overrides: Any) -> str:
        """An honestly signed ID token for ``account`` (profile claims included), with ``overrides``
        applied (None removes a claim): a token to send to XNAT's Bearer path in a test."""
        claims = self.id_token_claims(account, alg=alg)
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return self.make_id_token(claims, mode=TokenMode.OK, alg=alg)

    @staticmethod
    def _signing_input(header: dict, claims: dict) -> bytes:
        return (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(claims, separators=(",", ":")).encode())
        ).encode("ascii")

    @classmethod
    def _unsigned(cls, header: dict, claims: dict, signature: bytes) -> str:
        return cls._signing_input(header, claims).decode("ascii") + "." + _b64url(signature)

    # -- HTTP ---------------------------------------------------------------------------------

    def _application(self, door: str = "main") -> tornado.web.Application:
        args = {"idp": self, "door": door}
        return tornado.web.Application(
            [
                (r"/\.well-known/openid-configuration", _Discovery, args),
                (r"/jwks", _Jwks, args),
                (r"/authorize", _Authorize, args),
                (r"/token", _Token, args),
                (r"/userinfo", _Userinfo, args),
            ],
            log_function=lambda handler: None,  # URLs carry nonces and codes; keep them out of logs
        )

    def _redirect_allowed(self, uri: str) -> bool:
        if self.redirect_uris:
            return uri in self.redirect_uris
        parts = urlsplit(uri)
        return parts.scheme == "http" and parts.hostname == LOOPBACK

    def _new_code(self) -> str:
        code = secrets.token_urlsafe(24)
        with self._lock:
            self.codes_issued.append(code)
            ISSUED_CODES.add(code)
        return code

    def _authorize(self, params: dict[str, str]) -> _Grant:
        with self._lock:
            previous = self.nonces[-1] if self.nonces else None
            self.nonces.append(params.get("nonce"))
        account = params.get("login_hint") or self.default_account
        if account not in self.accounts:
            account = self.default_account
        return _Grant(
            client_id=params["client_id"],
            redirect_uri=params["redirect_uri"],
            scope=params.get("scope", "openid"),
            account=account,
            nonce=params.get("nonce"),
            code_challenge=params.get("code_challenge"),
            previous_nonce=previous,
        )

    def _issue(self, account: str, scope: str, nonce: str | None, previous_nonce: str | None) -> dict:
        access_token = secrets.token_urlsafe(32)
        session = _Session(account=account, scope=scope)
        self._access_tokens[access_token] = session
        claims = self.id_token_claims(account, nonce=nonce, access_token=access_token)
        response = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": scope,
            "id_token": self.make_id_token(claims, previous_nonce=previous_nonce),
        }
        if self.issue_refresh_token or "offline_access" in scope.split():
            refresh_token = secrets.token_urlsafe(32)
            self._refresh_tokens[refresh_token] = session
            response["refresh_token"] = refresh_token
        self.issued.append(response)
        return response


class _Base(tornado.web.RequestHandler):
    endpoint = ""

    def initialize(self, idp: RogueIdP, door: str = "main") -> None:
        self.idp = idp
        self.door = door

    async def prepare(self) -> None:
        with self.idp._arrived:
            self.idp.counts[self.endpoint] += 1
            self.idp._arrived.notify_all()
        fault = self.idp.faults.get(self.endpoint) if self.idp.fault_applies(self.endpoint, self.door) else None
        if fault == "hang":
            await self.idp.hang()
            self.request.connection.stream.close()
            raise tornado.web.Finish()
        if fault == "garbage":
            self.set_header("Content-Type", "text/html")
            self.finish("<html><body>Service temporarily unavailable</body></html>")
        elif isinstance(fault, int):
            self.set_status(fault)
            self.finish({"error": "server_error"})

    def json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(body))

    def oauth_error(self, error: str, status: int = 400) -> None:
        self.json({"error": error}, status)


class _Discovery(_Base):
    endpoint = "discovery"

    def get(self) -> None:
        self.json(self.idp.discovery_document())


class _Jwks(_Base):
    endpoint = "jwks"

    def get(self) -> None:
        self.json(self.idp.jwks())


class _Authorize(_Base):
    endpoint = "authorize"

    def get(self) -> None:
        params = {k: self.get_argument(k) for k in self.request.arguments}
        self.idp.requests["authorize"].append(dict(params))
        if params.get("client_id") != self.idp.client_id:
            return self.oauth_error("invalid_client")  # never redirect for an unknown client
        redirect_uri = params.get("redirect_uri", "")
        if not self.idp._redirect_allowed(redirect_uri):
            return self.oauth_error("invalid_request")  # never redirect to an unregistered URI
        back: dict[str, str] = {}
        if "state" in params:
            back["state"] = params["state"]
        if params.get("response_type") != "code":
            back["error"] = "unsupported_response_type"
        elif "code_challenge" in params and params.get("code_challenge_method") != "S256":
            back["error"] = "invalid_request"
        else:
            code = self.idp._new_code()
            self.idp._codes[code] = self.idp._authorize(params)
            back["code"] = code
        sep = "&" if "?" in redirect_uri else "?"
        self.redirect(redirect_uri + sep + urlencode(back))


class _Token(_Base):
    endpoint = "token"

    def _client_credentials(self) -> tuple[str | None, str | None]:
        auth = self.request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                raw = base64.b64decode(auth[6:]).decode()
            except (ValueError, UnicodeDecodeError):
                return None, None
            client_id, _, secret = raw.partition(":")
            return unquote_plus(client_id), unquote_plus(secret)
        return self.get_body_argument("client_id", None), self.get_body_argument("client_secret", None)

    def post(self) -> None:
        idp = self.idp
        sent = {k: self.get_body_argument(k) for k in self.request.body_arguments if k != "client_secret"}
        idp.requests["token"].append(sent)
        client_id, secret = self._client_credentials()
        if client_id != idp.client_id or not secret or not hmac.compare_digest(
            secret.encode(), idp.client_secret.encode()
        ):
            return self.oauth_error("invalid_client", 401)
        grant_type = self.get_body_argument("grant_type", "")
        if grant_type == "refresh_token":
            session = idp._refresh_tokens.get(self.get_body_argument("refresh_token", ""))
            if session is None:
                return self.oauth_error("invalid_grant")
            return self.json(idp._issue(session.account, session.scope, None, None))
        if grant_type != "authorization_code":
            return self.oauth_error("unsupported_grant_type")
        grant = idp._codes.pop(self.get_body_argument("code", ""), None)  # single use
        if grant is None or grant.client_id != client_id:
            return self.oauth_error("invalid_grant")
        if self.get_body_argument("redirect_uri", None) != grant.redirect_uri:
            return self.oauth_error("invalid_grant")
        verifier = self.get_body_argument("code_verifier", None)
        if grant.code_challenge is not None:
            expected = _b64url(hashlib.sha256((verifier or "").encode()).digest())
            if not verifier or not hmac.compare_digest(expected, grant.code_challenge):
                return self.oauth_error("invalid_grant")
        elif verifier is not None:
            return self.oauth_error("invalid_grant")
        self.json(idp._issue(grant.account, grant.scope, grant.nonce, grant.previous_nonce))


class _Userinfo(_Base):
    endpoint = "userinfo"

    def _answer(self) -> None:
        auth = self.request.headers.get("Authorization", "")
        session = self.idp._access_tokens.get(auth[7:]) if auth.startswith("Bearer ") else None
        if session is None or session.expires < time.time():
            self.set_header("WWW-Authenticate", 'Bearer error="invalid_token"')
            return self.oauth_error("invalid_token", 401)
        claims = dict(self.idp.accounts[session.account])
        if self.idp.userinfo_sub_override is not None:
            claims["sub"] = self.idp.userinfo_sub_override
        self.json(claims)

    get = post = _answer


# -- a scripted login (no browser), for tests of the library layer ---------------------------


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    verifier = secrets.token_urlsafe(48)
    return verifier, _b64url(hashlib.sha256(verifier.encode()).digest())


async def code_flow(
    http: httpx.AsyncClient,
    idp: RogueIdP,
    *,
    nonce: str | None,
    login_hint: str | None = None,
    scope: str = "openid profile email",
    redirect_uri: str = f"http://{LOOPBACK}/hub/oauth_callback",
) -> dict[str, Any]:
    """Run authorize + token against ``idp`` like a relying party would; the token response.

    The callback URL is only parsed, never requested.
    """
    verifier, challenge = pkce_pair()
    state = secrets.token_urlsafe(16)
    params = {
        "response_type": "code",
        "client_id": idp.client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if nonce is not None:
        params["nonce"] = nonce
    if login_hint is not None:
        params["login_hint"] = login_hint
    response = await http.get(idp.url("/authorize"), params=params, follow_redirects=False)
    if response.status_code != 302:
        raise AssertionError(f"authorize answered {response.status_code}")
    query = parse_qs(urlsplit(response.headers["location"]).query)
    if query.get("state") != [state]:
        raise AssertionError("authorize returned another state")
    response = await http.post(
        idp.url("/token"),
        data={
            "grant_type": "authorization_code",
            "code": query["code"][0],
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
            "client_id": idp.client_id,
            "client_secret": idp.client_secret,
        },
    )
    response.raise_for_status()
    return response.json()


# -- pytest fixtures (import them into a test module, or register this module as a plugin) ----


@pytest.fixture(scope="session")
def rogue_idp_server():
    """One rogue IdP for the whole session (its keys take a moment to generate)."""
    with RogueIdP() as idp:
        yield idp


@pytest.fixture
def rogue_idp(rogue_idp_server):
    """The session's rogue IdP, honest again and with zero counters for this test."""
    rogue_idp_server.reset()
    yield rogue_idp_server
    rogue_idp_server.reset()
